"""Container and unit attribution from /proc/<pid>/cgroup text as real hosts write it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from logly.tracer.containers import container_of, parse_cgroup

DOCKER_ID = "3f1c2b9a8e7d6c5b4a3928171615141312111009080706050403020100abcdef"
K8S_ID = "9d2a6f8e1c7b4a3d5e0f9c8b7a6d5e4f3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f"
POD_UID = "8f4c0c5e_2d2b_4b8e_9e0a_1c2d3e4f5a6b"

SAMPLES = [
    # Docker, cgroup v2, systemd cgroup driver (Debian 12, Ubuntu 22.04+ default)
    (f"0::/system.slice/docker-{DOCKER_ID}.scope\n", f"docker:{DOCKER_ID}"),
    # Docker, cgroup v1, cgroupfs driver (older hosts): one line per hierarchy
    (
        f"12:hugetlb:/docker/{DOCKER_ID}\n11:memory:/docker/{DOCKER_ID}\n"
        f"10:cpu,cpuacct:/docker/{DOCKER_ID}\n1:name=systemd:/docker/{DOCKER_ID}\n0::/\n",
        f"docker:{DOCKER_ID}",
    ),
    # Docker-in-hybrid: v1 controllers name the container, the v2 line is the host's
    (
        f"4:memory:/docker/{DOCKER_ID}\n1:name=systemd:/docker/{DOCKER_ID}\n"
        "0::/system.slice/containerd.service\n",
        f"docker:{DOCKER_ID}",
    ),
    # Podman rootful and rootless (cgroup v2)
    (f"0::/machine.slice/libpod-{DOCKER_ID}.scope/container\n", f"podman:{DOCKER_ID}"),
    (
        "0::/user.slice/user-1000.slice/user@1000.service/user.slice/"
        f"libpod-{DOCKER_ID}.scope/container\n",
        f"podman:{DOCKER_ID}",
    ),
    # Podman's conmon is not the container: its scope is the unit
    (f"0::/machine.slice/libpod-conmon-{DOCKER_ID}.scope\n",
     f"systemd:libpod-conmon-{DOCKER_ID}.scope"),
    # Kubernetes with containerd (systemd driver, v2) and with cgroupfs (v1)
    (
        "0::/kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{POD_UID}.slice/cri-containerd-{K8S_ID}.scope\n",
        f"containerd:{K8S_ID}",
    ),
    (
        f"11:memory:/kubepods/burstable/pod{POD_UID.replace('_', '-')}/{K8S_ID}\n"
        f"1:name=systemd:/kubepods/burstable/pod{POD_UID.replace('_', '-')}/{K8S_ID}\n",
        f"containerd:{K8S_ID}",
    ),
    # CRI-O
    (
        f"0::/kubepods.slice/kubepods-pod{POD_UID}.slice/crio-{K8S_ID}.scope\n",
        f"crio:{K8S_ID}",
    ),
    # systemd units: a service, a login session, a user's service under user@.service
    ("0::/system.slice/ssh.service\n", "systemd:ssh.service"),
    ("0::/user.slice/user-1000.slice/session-3.scope\n", "systemd:session-3.scope"),
    (
        "0::/user.slice/user-1000.slice/user@1000.service/app.slice/"
        "app-gnome-firefox-2212.scope\n",
        "systemd:app-gnome-firefox-2212.scope",
    ),
    # cgroup v1 systemd hierarchy only names the unit
    ("7:pids:/system.slice/cron.service\n1:name=systemd:/system.slice/cron.service\n0::/\n",
     "systemd:cron.service"),
    # the root cgroup, and a v1 host where only a non-unit path appears
    ("0::/\n", None),
    ("4:memory:/process_api/4b2406c7b8100964828abbfc530f92a6\n1:name=systemd:/\n0::/\n", None),
    # not cgroup text at all
    ("", None),
    ("garbage\n::\n", None),
]


@pytest.mark.parametrize(("text", "want"), SAMPLES)
def test_parse_cgroup_samples(text: str, want: str | None) -> None:
    assert parse_cgroup(text) == want


def test_short_or_uppercase_ids_are_not_containers() -> None:
    # a 63-hex or upper-case id is not what the runtimes write: no false attribution
    assert parse_cgroup(f"0::/docker/{DOCKER_ID[:-1]}\n") is None
    assert parse_cgroup(f"0::/system.slice/docker-{DOCKER_ID.upper()}.scope\n") == \
        f"systemd:docker-{DOCKER_ID.upper()}.scope"


def test_container_of_reads_this_process_and_not_a_gone_one() -> None:
    own = Path(f"/proc/{os.getpid()}/cgroup").read_text(encoding="utf-8")
    assert container_of(os.getpid()) == parse_cgroup(own)
    assert container_of(2**22 + 7) is None  # above pid_max: never a live process
