"""Fuzzed inputs (bench/fuzz.py at the suite's counts): every case accepted as exactly what was saved, or
refused in one line naming the file or flag; never a traceback, never a folder left by a refusal."""

import pytest

import bench.fuzz as fuzz


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    return {o.kind: o for o in fuzz.fuzz_all(scale=1, seed=0, folder=str(tmp_path_factory.mktemp("fuzz")))}


@pytest.mark.parametrize("kind", list(fuzz.SUITE_COUNTS))
def test_every_fuzzed_input_is_accepted_whole_or_refused_in_one_line(outcomes, kind):
    outcome = outcomes[kind]
    assert outcome.tried == fuzz.SUITE_COUNTS[kind]
    assert outcome.findings == []
    assert outcome.accepted + outcome.refused == outcome.tried


def test_the_fuzzed_kinds_each_meet_refusals(outcomes):
    """The generators reach the refusals: damaged files and wrong state dicts are refused, and the argument
    vectors hit both accepted and refused runs."""
    for kind in ("checkpoint", "state dict", "data file", "run record", "resume state"):
        assert outcomes[kind].refused > 0, kind
    assert outcomes["state dict"].accepted == 0
    for kind in ("main.py argv", "test.py argv", "reproduce.py argv"):
        assert outcomes[kind].refused > 0, kind
