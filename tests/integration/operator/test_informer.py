"""The informer against a real kube-apiserver: a write's response that arrives after the watch
reported the object deleted does not bring the object back into the cache, and a watch event
that arrives after a later write's response does not take the cache back to an older version."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anyio
import pytest

from lattice.adapters.controlplane import ControlPlane
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.app.operator.informer import Informer
from lattice.ports.kube import ResourceRef

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

LABEL = "lattice.dev/test=informer-tombstone"


def test_a_stale_write_response_does_not_resurrect_a_deleted_object(cell_control_plane: ControlPlane) -> None:
    async def scenario() -> None:
        api = await Kr8sKube.connect(str(cell_control_plane.kubeconfig))
        name, namespace = "informer-tombstone", "default"
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"lattice.dev/test": "informer-tombstone"},
            },
            "data": {"a": "1"},
        }
        seen: dict[str, asyncio.Event] = {"ADDED": asyncio.Event(), "DELETED": asyncio.Event()}

        def handler(event: str, _: object) -> None:
            if event in seen:
                seen[event].set()

        async def next_event(kind: str) -> None:
            with anyio.fail_after(30):
                await seen[kind].wait()
            seen[kind].clear()

        informer = Informer(api, "v1", "ConfigMap", label_selector=LABEL, handler=handler)
        task = asyncio.create_task(informer.run())
        try:
            await informer.synced.wait()
            stored = await api.apply(body, "test")
            await next_event("ADDED")
            assert informer.get(namespace, name) is not None
            await api.delete(ResourceRef("v1", "ConfigMap", name, namespace))
            await next_event("DELETED")
            assert informer.get(namespace, name) is None

            # the response of a write made before the deletion, handled after the DELETED event
            informer.update(stored)
            assert informer.get(namespace, name) is None

            # the same name created again is a new object: seen, from the watch and from a write
            again = await api.apply(body, "test")
            informer.update(again)
            assert informer.get(namespace, name) == again
            await api.delete(ResourceRef("v1", "ConfigMap", name, namespace))
            await next_event("DELETED")
            assert informer.get(namespace, name) is None
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    anyio.run(scenario)


def test_a_late_watch_event_does_not_take_the_cache_back_to_an_older_version(
    cell_control_plane: ControlPlane,
) -> None:
    """Two writes made while the event loop is blocked (a synchronous kubectl), the second's
    response recorded with update(): the watch then delivers both events, and the cache never
    holds the first version again."""
    label = "lattice.dev/test=informer-order"

    async def scenario() -> None:
        api = await Kr8sKube.connect(str(cell_control_plane.kubeconfig))
        name = "informer-order"
        cached: list[int] = []  # the cached version after each event
        both = asyncio.Event()

        def handler(_: str, obj: dict[str, Any]) -> None:
            if obj["metadata"]["name"] == name:
                stored = informer.get("default", name)
                cached.append(int(stored["metadata"]["resourceVersion"]) if stored else 0)
                if len(cached) == 2:
                    both.set()

        informer = Informer(api, "v1", "ConfigMap", label_selector=label, handler=handler)
        task = asyncio.create_task(informer.run())
        try:
            await informer.synced.wait()
            written = []
            for value in ("1", "2"):
                body = {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {
                        "name": name,
                        "namespace": "default",
                        "labels": {"lattice.dev/test": "informer-order"},
                    },
                    "data": {"a": value},
                }
                out = cell_control_plane.kubectl(
                    "apply",
                    "--server-side",
                    "--field-manager=test",
                    "-o",
                    "json",
                    "-f",
                    "-",
                    input=json.dumps(body),
                )  # blocks the loop: the informer sees neither event yet
                written.append(json.loads(out.stdout))
            informer.update(written[-1])
            last = int(written[-1]["metadata"]["resourceVersion"])
            with anyio.fail_after(30):
                await both.wait()
            assert cached == [last, last]
            assert informer.get("default", name)["data"] == {"a": "2"}
            await api.delete(ResourceRef("v1", "ConfigMap", name, "default"))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    anyio.run(scenario)
