"""ClusterMover over the real ``clusterctl`` binary (built from the pinned CAPI module)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from lattice.ports.mover import MoveError

MOVE_TIMEOUT_S = 300.0


class ClusterctlMover:
    lists_kind_by_kind = True

    def __init__(self, clusterctl: Path, *, timeout: float = MOVE_TIMEOUT_S) -> None:
        self.clusterctl = clusterctl
        self.timeout = timeout

    async def export(self, kubeconfig: Path, namespace: str, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        await self._run(
            "move",
            "--kubeconfig",
            str(kubeconfig),
            "--namespace",
            namespace,
            "--to-directory",
            str(directory),
        )
        files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix == ".yaml")
        if not files:
            raise MoveError(f"clusterctl exported nothing from namespace {namespace!r}")
        return files

    async def import_(self, kubeconfig: Path, directory: Path) -> None:
        await self._run("move", "--to-kubeconfig", str(kubeconfig), "--from-directory", str(directory))

    async def _run(self, *args: str) -> str:
        env = {**os.environ, "CLUSTERCTL_DISABLE_VERSIONCHECK": "true"}
        try:
            process = await asyncio.create_subprocess_exec(
                str(self.clusterctl),
                *args,
                "-v",
                "1",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
            )
        except OSError as exc:
            raise MoveError(f"cannot run {self.clusterctl}: {exc}") from exc
        try:
            output, _ = await asyncio.wait_for(process.communicate(), self.timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise MoveError(f"clusterctl {' '.join(args[:1])} timed out after {self.timeout:.0f}s") from None
        text = output.decode(errors="replace")
        if process.returncode != 0:
            tail = "\n".join(text.strip().splitlines()[-15:])
            raise MoveError(f"clusterctl {' '.join(args)} failed ({process.returncode}): {tail}")
        return text
