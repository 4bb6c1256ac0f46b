"""The tolerant log readers behind the page: CSV cells a spreadsheet would run as formulas are neutralised."""

from __future__ import annotations

import pytest

from fsmtrain.logview import csv_cell


class TestCsvCell:
    @pytest.mark.parametrize("text", ["=1+1", "+1", "-1", "@SUM(A1)", "\t=1", " =HYPERLINK(\"x\")", "\u3000=1",
                                      "\uff1dHYPERLINK(\"x\")", "\uff0b1", "\uff0d1", "\uff20SUM(A1)", "  \uff1d1"])
    def test_text_a_spreadsheet_would_run_starts_with_a_quote(self, text):
        """Formulas, also after leading spaces or in full-width forms, are quoted with a leading '."""
        assert csv_cell(text).lstrip('"').startswith("'")

    @pytest.mark.parametrize("text", ["plain", "a=1", "1e-3 lr", " spaced"])
    def test_ordinary_text_is_left_as_it_is(self, text):
        assert csv_cell(text) == text

    def test_numbers_are_numbers(self):
        assert csv_cell(-1.5) == "-1.5" and csv_cell(-3) == "-3"
