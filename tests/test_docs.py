"""The ``>>>`` examples of the Markdown pages in docs/ run as doctests, so that what the docs show stays true."""
import doctest
import glob
import os

import pytest

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
PAGES = sorted(glob.glob(os.path.join(DOCS, "*.md")))


def test_the_docs_folder_has_pages():
    assert PAGES, f"no Markdown pages in {DOCS}"


@pytest.mark.parametrize("page", PAGES, ids=os.path.basename)
def test_examples_of_a_page_run(page):
    result = doctest.testfile(page, module_relative=False, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                              verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {page} failed (see the output above)"
