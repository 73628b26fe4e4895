"""tests/conftest.py: real-data tests are marked, thread counts do not leak between tests."""

from __future__ import annotations

import torch

pytest_plugins = ["pytester"]

CONFTEST = ("from tests.conftest import (_restore_torch_threads, one_thread, pbc_dir, pytest_collection_modifyitems,"
            " rpi_dir)  # noqa: F401\n")


def test_tests_using_the_real_data_fixtures_are_marked_realdata(pytester):
    """Deselecting ``realdata`` removes every test that reads ../shared/data, marked by hand or not."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import pytest

        @pytest.fixture
        def sample(pbc_dir):
            return pbc_dir

        def test_direct(pbc_dir): pass
        def test_via_fixture(sample): pass
        def test_rpi(rpi_dir): pass
        def test_plain(): pass
        """
    )
    result = pytester.runpytest("-m", "not realdata", "--collect-only", "-q", "-p", "no:cacheprovider")
    out = result.stdout.str()
    assert "test_plain" in out
    assert "test_direct" not in out and "test_via_fixture" not in out and "test_rpi" not in out
    assert "3 deselected" in out


def test_thread_count_set_in_one_test_is_restored_after_it(pytester):
    pytester.makeconftest(CONFTEST)
    n = torch.get_num_threads()
    other = 1 if n != 1 else 2
    pytester.makepyfile(
        f"""
        import pytest, torch

        def test_a():
            torch.set_num_threads({other})

        @pytest.mark.usefixtures("one_thread")
        def test_b():
            assert torch.get_num_threads() == 1

        def test_c():
            assert torch.get_num_threads() == {n}
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=3)
    assert torch.get_num_threads() == n
