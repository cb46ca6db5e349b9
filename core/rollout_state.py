"""The router's rollout state, persisted next to the data dir (``rollout.json``).

Written atomically (temp file + ``os.replace``) at every step of a rollout, so that a
process that restarts mid-rollout comes back serving what it says: a shard replica loads
the stable bundle named here (not the one on its command line), and so does the router.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from annfleet.errors import ConfigError
from annfleet.files import replace_durably

FILE_NAME = "rollout.json"


@dataclass(frozen=True)
class BundleRef:
    bundle_id: str
    path: str


@dataclass(frozen=True)
class RolloutState:
    stable: BundleRef | None = None
    previous: BundleRef | None = None  # rollback target while still held
    previous_release_at: float = 0.0  # unix seconds
    holder: str = ""  # non-empty while a rollout runs
    started_at: float = 0.0
    target: BundleRef | None = None  # the bundle being rolled out
    phase: str = ""
    canary: BundleRef | None = None  # a bundle serving canary_percent of users
    canary_percent: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def also_held(self, now: float) -> list[BundleRef]:
        """Bundles a restarted shard replica must hold beside the stable one: the canary, the
        rollback target while it is held, and the bundle of a rollout that is running."""
        refs = [self.canary]
        if self.previous is not None and self.previous_release_at > now:
            refs.append(self.previous)
        if self.holder:
            refs.append(self.target)
        stable = self.stable.bundle_id if self.stable else ""
        out: list[BundleRef] = []
        for ref in refs:
            if ref is not None and ref.bundle_id != stable and ref not in out:
                out.append(ref)
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "<rollout state>") -> RolloutState:
        try:
            data = json.loads(text)

            def ref(key: str) -> BundleRef | None:
                value = data.get(key)
                return BundleRef(str(value["bundle_id"]), str(value["path"])) if value else None

            return cls(
                stable=ref("stable"),
                previous=ref("previous"),
                previous_release_at=float(data.get("previous_release_at", 0.0)),
                holder=str(data.get("holder", "")),
                started_at=float(data.get("started_at", 0.0)),
                target=ref("target"),
                phase=str(data.get("phase", "")),
                canary=ref("canary"),
                canary_percent=float(data.get("canary_percent", 0.0)),
                history=list(data.get("history", [])),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"rollout state {source}: malformed: {exc}") from exc


def state_file(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


def read_state(path: Path) -> RolloutState | None:
    """The persisted state, or None when there is no file yet."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"rollout state {path}: cannot read: {exc.strerror}") from exc
    return RolloutState.from_json(text, str(path))


def write_state(path: Path, state: RolloutState) -> None:
    """Atomically replace ``path`` (a reader sees the old or the new file, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_durably(path, lambda f: f.write(state.to_json().encode()))


def also_held(path: Path | None) -> list[Path]:
    """The bundles besides the stable one that the state at ``path`` says to hold."""
    if path is None:
        return []
    state = read_state(path)
    if state is None:
        return []
    return [Path(ref.path) for ref in state.also_held(time.time())]


def stable_bundle(path: Path | None) -> Path | None:
    """The stable bundle the state at ``path`` says to serve, if any."""
    if path is None:
        return None
    state = read_state(path)
    if state is None or state.stable is None:
        return None
    return Path(state.stable.path)
