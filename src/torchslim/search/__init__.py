"""Auto-compression under an accuracy budget: a multi-objective search over recipes.

``search(entry, SearchConfig(max_drop=1.0), out)``; ``torchslim compress MODEL --max-drop 1.0
--objective latency --out DIR`` from the command line; ``write_report(DIR)`` for report.html.
"""

from torchslim.search.config import SearchConfig, parse_budget, parse_target
from torchslim.search.report import write_report
from torchslim.search.run import SearchState, search

__all__ = ["SearchConfig", "SearchState", "parse_budget", "parse_target", "search", "write_report"]
