"""What every check is given: the node's namespace, the networks in scope, the directories, and
the age below which a file is too fresh to judge."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from podnet.doctor.live import LiveAttachments
from podnet.doctor.scope import Scope
from podnet.kernel.netlink import Netlink

# An ADD in flight has written its pending marker and may have reserved its address but not yet
# made its veth: for this long a file is taken to belong to an operation under way.
DEFAULT_GRACE_S = 60.0


@dataclass
class Context:
    nl: Netlink  # the node's namespace, for the scan (repairs open sessions of their own)
    netns: str | None  # --netns as given (None: the caller's namespace)
    scope: Scope
    cache_dir: Path
    grace: float = DEFAULT_GRACE_S
    now: float = field(default_factory=time.time)
    live: LiveAttachments = field(init=False)
    too_fresh: list[str] = field(default_factory=list)  # files left unjudged because of the grace

    def __post_init__(self) -> None:
        self.live = LiveAttachments.read(self.nl, [n.name for n in self.scope.judged])

    def fresh(self, path: str | Path) -> bool:
        """Changed within the grace period (or gone): not judged now, and remembered for the report."""
        try:
            mtime = os.lstat(path).st_mtime
        except FileNotFoundError:
            return True
        if self.now - mtime < self.grace:
            self.too_fresh.append(str(path))
            return True
        return False
