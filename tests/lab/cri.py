"""A small CRI client for the containerd test: what kubelet asks of a runtime to make and
remove a pod sandbox, over containerd's gRPC socket.

The stubs are generated when this module is first imported, from the vendored
``third_party/cri-api/api.proto`` (see its README) with ``grpc_tools.protoc``, into a
temporary directory that is removed again once they are loaded: no generated code lives in
the repository.  Debian 12 has no ``crictl``.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from types import ModuleType

import grpc
from grpc_tools import protoc

PROTO = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "third_party",
    "cri-api",
    "api.proto",
)
MODULE = "ovs_overlay_cri_api"  # the generated modules' name, unlikely to clash
CALL_TIMEOUT = 60.0
# gogoproto's import and file options shape only the Go code; protoc would need gogo.proto.
_GOGO = re.compile(
    r'^\s*(import "github\.com/gogo/protobuf/gogoproto/gogo\.proto";|option \(gogoproto\.[a-z_]+\)\s*=.*;)\s*$'
)


def _generate() -> tuple[ModuleType, ModuleType]:
    """Generate and import ``<MODULE>_pb2`` and ``<MODULE>_pb2_grpc``."""
    if MODULE + "_pb2_grpc" in sys.modules:
        return sys.modules[MODULE + "_pb2"], sys.modules[MODULE + "_pb2_grpc"]
    workdir = tempfile.mkdtemp(prefix="ovs-overlay-cri-")
    try:
        with open(PROTO) as f:
            source = [line for line in f if not _GOGO.match(line)]
        with open(os.path.join(workdir, MODULE + ".proto"), "w") as f:
            f.writelines(source)
        include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{workdir}",
                f"-I{include}",
                f"--python_out={workdir}",
                f"--grpc_python_out={workdir}",
                os.path.join(workdir, MODULE + ".proto"),
            ]
        )
        if code != 0:
            raise RuntimeError(f"grpc_tools.protoc could not compile {PROTO} (exit {code})")
        sys.path.insert(0, workdir)
        try:
            pb2 = importlib.import_module(MODULE + "_pb2")
            pb2_grpc = importlib.import_module(MODULE + "_pb2_grpc")
        finally:
            sys.path.remove(workdir)
        return pb2, pb2_grpc
    finally:
        shutil.rmtree(workdir)


api, api_grpc = _generate()


@dataclass(frozen=True)
class SandboxStatus:
    id: str
    state: str  # SANDBOX_READY or SANDBOX_NOTREADY
    ip: str
    netns: str  # the network namespace's path, from the runtime's verbose info
    pid: int  # the sandbox's process (its init), for a look at /proc


class CriClient:
    """RunPodSandbox, PodSandboxStatus, StopPodSandbox and RemovePodSandbox over ``socket``."""

    def __init__(self, socket: str):
        self.channel = grpc.insecure_channel(f"unix://{socket}")
        self.runtime = api_grpc.RuntimeServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def version(self) -> str:
        answer = self.runtime.Version(api.VersionRequest(), timeout=CALL_TIMEOUT)
        return f"{answer.runtime_name} {answer.runtime_version} (CRI {answer.runtime_api_version})"

    def run_pod_sandbox(
        self, namespace: str, name: str, uid: str, cgroup_parent: str, log_dir: str
    ) -> str:
        """A pod sandbox as kubelet asks for one (the host's network, no containers);
        returns its id."""
        config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=name, namespace=namespace, uid=uid, attempt=0),
            hostname=name,
            log_directory=log_dir,
            labels={"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace},
            linux=api.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent),
        )
        answer = self.runtime.RunPodSandbox(
            api.RunPodSandboxRequest(config=config), timeout=CALL_TIMEOUT
        )
        return answer.pod_sandbox_id

    def pod_sandbox_status(self, sandbox_id: str) -> SandboxStatus:
        answer = self.runtime.PodSandboxStatus(
            api.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True),
            timeout=CALL_TIMEOUT,
        )
        import json  # only here: the verbose info is JSON

        info = json.loads(answer.info.get("info", "{}"))
        netns = next(
            (
                ns.get("path", "")
                for ns in info.get("runtimeSpec", {}).get("linux", {}).get("namespaces", [])
                if ns.get("type") == "network"
            ),
            "",
        )
        return SandboxStatus(
            id=answer.status.id,
            state=api.PodSandboxState.Name(answer.status.state),
            ip=answer.status.network.ip,
            netns=netns,
            pid=int(info.get("pid", 0)),
        )

    def list_pod_sandboxes(self) -> list[str]:
        answer = self.runtime.ListPodSandbox(api.ListPodSandboxRequest(), timeout=CALL_TIMEOUT)
        return [s.id for s in answer.items]

    def stop_pod_sandbox(self, sandbox_id: str) -> None:
        self.runtime.StopPodSandbox(
            api.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=CALL_TIMEOUT
        )

    def remove_pod_sandbox(self, sandbox_id: str) -> None:
        self.runtime.RemovePodSandbox(
            api.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=CALL_TIMEOUT
        )
