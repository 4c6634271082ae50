"""How pytest-xdist shares the suite between its workers (`pytest -n 2`).

The whole-system modules (`tests/e2e/`, `tests/pages/`) share one module-scoped system
each — a kube-apiserver and an operator, a Helm release, an API server and its browser — and
their tests run in order, each leaving the system as the next one expects: each of those
modules runs whole on one worker. Every other test is a unit of its own and goes to
whichever worker is free, so the two workers finish at about the same time.

Why not `--dist loadgroup` with `xdist_group` marks: xdist 3.8 groups by rewriting
`item._nodeid`, which pytest 9 no longer reads (a node id is `item._id`), so the marks are
silently ignored and a module's tests are split between workers.
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling

WHOLE_MODULE_DIRS = ("tests/e2e/", "tests/pages/")


def scope(nodeid: str) -> str:
    """The unit of work a test belongs to: its module, or the test alone."""
    if nodeid.startswith(WHOLE_MODULE_DIRS):
        return nodeid.split("::", 1)[0]
    return nodeid


class WholeModules(LoadScopeScheduling):
    """`--dist loadscope` with the scopes of `scope()`.

    The scopes are queued largest first (xdist's `--loadscope-reorder`, on by default), so
    the long whole-system modules start at once and the single tests fill in around them.
    """

    def _split_scope(self, nodeid: str) -> str:
        return scope(nodeid)
