"""--benchmark-json on pytest-benchmark before 5.3, whose argparse type opens (and empties) the file while parsing:
the suite closes and removes the emptied file and writes the JSON whole at the end (the H200 image
has 5.2.3: a killed run there left an empty JSON file)."""

from __future__ import annotations

import json
import os

import pytest

from attnsuite import benchmark_json_option as option


def test_the_json_is_written_whole_when_the_block_closes_and_not_before(tmp_path):
    target = tmp_path / "new" / "sub" / "out.json"
    deferred = option.DeferredJsonFile(str(target))
    with deferred as fh:  # how pytest-benchmark before 5.3 writes it
        fh.write(b'{"benchmarks": ')
        assert not target.exists()  # nothing on disk until the block closes
        fh.write('[1]}')
    assert json.loads(target.read_text()) == {"benchmarks": [1]}
    assert os.fspath(deferred) == str(target) and str(deferred) == str(target)


def test_a_run_that_writes_nothing_leaves_nothing(tmp_path):
    target = tmp_path / "out.json"
    option.DeferredJsonFile(str(target)).close()
    assert not target.exists()


def test_the_file_argparse_emptied_is_closed_and_removed(tmp_path):
    target = tmp_path / "out.json"
    opened = open(target, "wb")  # what argparse.FileType("wb") hands over: the old JSON already emptied
    deferred = option.defer(opened)
    assert opened.closed and not target.exists()
    assert isinstance(deferred, option.DeferredJsonFile) and deferred.name == str(target)


def test_a_file_someone_wrote_into_meanwhile_is_kept(tmp_path):
    target = tmp_path / "out.json"
    opened = open(target, "wb")
    opened.write(b"{}")
    opened.flush()
    option.defer(opened)
    assert target.read_text() == "{}"


@pytest.mark.parametrize("given", ["path-string", "path-object", "deferred"])
def test_a_path_or_an_already_deferred_file_is_left_as_it_is(tmp_path, given):
    target = tmp_path / "out.json"
    value = {"path-string": str(target), "path-object": target,
             "deferred": option.DeferredJsonFile(str(target))}[given]

    class Config:
        class option:
            benchmark_json = value

        def getoption(self, name, default=None):
            return self.option.benchmark_json

    config = Config()
    option.pytest_configure(config)
    assert config.option.benchmark_json is value


def test_an_opened_file_becomes_a_deferred_one_before_pytest_benchmark_reads_it(tmp_path):
    target = tmp_path / "out.json"

    class Config:
        class option:
            benchmark_json = open(target, "wb")

        def getoption(self, name, default=None):
            return self.option.benchmark_json

    config = Config()
    option.pytest_configure(config)
    assert isinstance(config.option.benchmark_json, option.DeferredJsonFile) and not target.exists()
