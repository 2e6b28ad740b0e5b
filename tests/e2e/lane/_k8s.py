"""Kubernetes-object helpers for lane tests (pause pods, waiting for phases)."""

from __future__ import annotations

from typing import Any

from ._util import LaneError, wait_until


def pause_pod(name: str, node_name: str | None, image: str, *, labels: dict[str, str] | None = None) -> Any:
    """A ``V1Pod`` running only the pause image on ``node_name`` (no scheduler needed).

    With ``node_name=None`` the pod stays Pending (there is no scheduler) and is deleted at once.

    The pause image is the only image on a lane node: ``imagePullPolicy: Never``.
    """
    from kubernetes import client

    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels or {"app": "twe2e"}),
        spec=client.V1PodSpec(
            node_name=node_name,
            containers=[client.V1Container(name="pause", image=image, image_pull_policy="Never")],
            termination_grace_period_seconds=2,
            # no cluster DNS in the lane: avoids kubelet's MissingClusterDNS event
            dns_policy="Default",
            automount_service_account_token=False,
            enable_service_links=False,
        ),
    )


def wait_pod_running(core: Any, namespace: str, name: str, *, timeout: float = 60) -> Any:
    """Wait until the pod is Running with a pod IP; return it.

    Fails at once if the pod Failed; on timeout the error carries the pod's last phase, container
    states and events (e.g. ``FailedCreatePodSandBox`` with the runtime's message).
    """
    last: list[Any] = []

    def probe() -> Any:
        pod = core.read_namespaced_pod(name, namespace)
        last[:] = [pod]
        if pod.status.phase == "Failed":
            raise LaneError(f"pod {namespace}/{name} failed: {_describe(core, pod)}")
        if pod.status.phase == "Running" and pod.status.pod_ip:
            return pod
        return None

    try:
        return wait_until(f"pod {namespace}/{name} Running", probe, timeout=timeout, interval=0.2)
    except LaneError as exc:
        if last:
            raise LaneError(f"{exc}; {_describe(core, last[0])}") from exc
        raise


def _describe(core: Any, pod: Any) -> str:
    states = [
        f"{cs.name}: {cs.state.waiting.reason if cs.state.waiting else 'running' if cs.state.running else 'terminated'}"
        for cs in pod.status.container_statuses or []
    ]
    try:
        events = core.list_namespaced_event(
            pod.metadata.namespace, field_selector=f"involvedObject.name={pod.metadata.name}"
        ).items
        evs = [f"{e.reason}: {e.message}" for e in events[-5:]]
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        evs = [f"<events unavailable: {exc!r}>"]
    return f"phase={pod.status.phase} containers={states} events={evs}"


def wait_pod_gone(core: Any, namespace: str, name: str, *, timeout: float = 60) -> None:
    """Wait until reading the pod answers 404."""
    from kubernetes.client.exceptions import ApiException

    def probe() -> bool:
        try:
            core.read_namespaced_pod(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    wait_until(f"pod {namespace}/{name} deleted", probe, timeout=timeout, interval=0.2)
