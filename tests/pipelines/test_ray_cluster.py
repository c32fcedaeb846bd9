"""The shard stage on a Ray cluster of two nodes, a head and a worker, each its own `ray start` on
loopback: `ovdet shard --ray-address` runs tasks on both nodes, a worker killed mid-shard is retried,
the shards are byte-identical to a local run's, and a driver without the cluster's token is told in
one line what to set. The helpers and what they work around are in ``ray_cluster.py``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from ray_cluster import LOOPBACK_DRIVER, ImageGate, LoopbackCluster, kill_session, ray_free_env
from test_shard_stage import read_shard, visible_tars, write_data_yaml

from ovdet.config import SynthConfig
from ovdet.data.synthetic import generate_world

pytestmark = pytest.mark.slow

IMAGES = 8
SAMPLES_PER_SHARD = 2  # a task reads one image before it blocks on the next: a kill there is mid-shard


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="ovdet-ray-"))  # short, for Ray's socket paths
    cluster = LoopbackCluster(root, root / "home")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class World:
    plain: Path  # data.yaml over image files
    gated: Path  # the same data.yaml and annotations, each image a named pipe
    images: dict[Path, bytes]  # pipe -> the image file's bytes

    def image_of(self, key: str) -> Path:
        """The pipe of the record ``det-<image id>``."""
        images = json.loads((self.gated / "detection_train.json").read_text())["images"]
        (name,) = [image["file_name"] for image in images if f"det-{image['id']}" == key]
        return (self.gated / "images" / name).resolve()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    plain, gated = tmp_path_factory.mktemp("plain"), tmp_path_factory.mktemp("gated")
    generate_world(
        SynthConfig(image_size=96, num_detection=IMAGES, num_grounding=0, num_image_text=0, num_eval=0),
        plain,
        progress=False,
    )
    source = {"name": "det", "kind": "detection", "format": "coco", "paths": ["detection_train.json"],
              "image_root": "images"}
    write_data_yaml(plain / "data.yaml", {"sources": [source], "samples_per_shard": SAMPLES_PER_SHARD,
                                          "max_image_side": 64})  # every image is re-encoded
    shutil.copytree(plain, gated, dirs_exist_ok=True)
    images = {}
    for path in sorted((gated / "images").rglob("*.jpg")):
        images[path.resolve()] = path.read_bytes()
        path.unlink()
        os.mkfifo(path)
    return World(plain, gated, images)


def run_ovdet(args: list, env: dict[str, str], on_poll: Callable[[], None] = lambda: None,
              timeout: float = 180) -> subprocess.CompletedProcess:
    """`ovdet ARGS` in its own session, calling ``on_poll`` while it runs; leaves no process behind."""
    command = [sys.executable, "-m", "ovdet.cli", *map(str, args)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, env=env, start_new_session=True, stdout=out, stderr=err, text=True)
        try:
            deadline = time.monotonic() + timeout
            while process.poll() is None:
                assert time.monotonic() < deadline, f"ovdet {args[0]} ran over {timeout} s"
                on_poll()
                time.sleep(0.01)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            kill_session(process.pid)  # a local cluster the run started, if it outlived the run
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(command, process.returncode, out.read(), err.read())


def shard_command(config: Path, out: Path, *extra: str) -> list:
    return ["shard", "--config", config, "--out", out, *extra]


@dataclass
class LocalRun:
    out: Path
    manifest: dict


@pytest.fixture(scope="module")
def local_run(world, cluster, tmp_path_factory) -> LocalRun:
    """The plain data sharded by a local cluster (no ray_address): what every cluster run must write."""
    out = tmp_path_factory.mktemp("local") / "shards"
    env = ray_free_env(tmp_path_factory.mktemp("home"), RAY_TMPDIR=str(cluster.root), **LOOPBACK_DRIVER)
    result = run_ovdet(shard_command(world.plain / "data.yaml", out), env)
    assert result.returncode == 0, result.stderr
    return LocalRun(out, json.loads((out / "manifest.json").read_text()))


def driver_env(cluster: LoopbackCluster, home: Path) -> dict[str, str]:
    """A driver on another machine: no token file in its home, the token in RAY_AUTH_TOKEN."""
    return ray_free_env(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster.token, **LOOPBACK_DRIVER)


def assert_same_shards_as(local_run: LocalRun, out: Path) -> None:
    assert visible_tars(out) == visible_tars(local_run.out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"] == local_run.manifest["sources"]
    det = manifest["sources"]["det"]
    assert (det["read"], det["written"], det["rejected"]) == (IMAGES, IMAGES, 0)
    assert det["boxes_written"] == det["boxes_read"] > 0


def feed_once_both_nodes_wait(gate: ImageGate, timeout: float = 60) -> Callable[[], None]:
    """Feed no image until a task waits on each node at once (a node has one CPU: one task each),
    then every image: the run can only finish if the cluster placed tasks on both nodes."""
    deadline = time.monotonic() + timeout
    both_waited = False

    def on_poll() -> None:
        nonlocal both_waited
        waiting = gate.poll()
        nodes = {reader.node for reader in waiting}
        both_waited = both_waited or nodes == {"head", "worker"}
        assert both_waited or time.monotonic() < deadline, (
            f"for {timeout} s shard tasks waited on {sorted(nodes)} only: the cluster used one node")
        for reader in waiting if both_waited else []:
            gate.feed(reader)

    return on_poll


def gated_cluster_run(cluster, world, tmp_path, out, on_poll_of: Callable[[ImageGate], Callable[[], None]]):
    """``ovdet shard --ray-address`` on the gated copy of the world; ``on_poll_of(gate)`` decides, at
    every poll, which waiting task reads on and which is killed. Returns the gate and the run's result."""
    gate = ImageGate(world.images, cluster)
    try:
        result = run_ovdet(shard_command(world.gated / "data.yaml", out, "--ray-address", cluster.address),
                           driver_env(cluster, tmp_path / "home"), on_poll_of(gate))  # fmt: skip
    finally:
        gate.close()
    return gate, result


def test_shard_tasks_run_on_both_nodes_and_write_what_a_local_run_writes(cluster, world, local_run, tmp_path):
    out = tmp_path / "shards"
    gate, result = gated_cluster_run(cluster, world, tmp_path, out, feed_once_both_nodes_wait)
    assert result.returncode == 0, result.stderr
    assert Counter(path for path, _, _ in gate.reads) == Counter(world.images.keys())  # each image once, no retry
    assert {node for _, _, node in gate.reads} == {"head", "worker"}
    assert_same_shards_as(local_run, out)


def kill_first_reader_of(gate: ImageGate, victims: set[Path]) -> Callable[[], None]:
    """SIGKILL the first worker found waiting on one of ``victims``; feed every other image."""

    def on_poll() -> None:
        for reader in gate.poll():
            if not gate.killed and reader.path in victims:
                gate.kill(reader)
            else:
                gate.feed(reader)

    return on_poll


def test_worker_killed_mid_shard_is_retried_and_the_shards_match_an_undisturbed_run(
    cluster, world, local_run, tmp_path
):
    shards = [read_shard(local_run.out / entry["path"]) for entry in local_run.manifest["sources"]["det"]["shards"]]
    first_image_of = {world.image_of(second[0]): world.image_of(first[0]) for first, second in shards}
    out = tmp_path / "shards"
    # the victim: a task that has read its first image
    gate, result = gated_cluster_run(cluster, world, tmp_path, out, lambda g: kill_first_reader_of(g, set(first_image_of)))
    assert result.returncode == 0, result.stderr
    (killed,) = gate.killed
    # the retry, in another worker, read both images of the shard again
    assert Counter(path for path, _, _ in gate.reads) == Counter(world.images.keys()) + Counter(
        [first_image_of[killed.path]]
    )
    assert killed.pid not in {pid for path, pid, _ in gate.reads if path == killed.path}
    assert_same_shards_as(local_run, out)


@pytest.mark.parametrize(
    ("settings", "has_token_file"),
    [
        ({}, True),  # ~/.ray/auth_token alone: a driver given an address does not turn authentication on
        ({"RAY_AUTH_MODE": "token"}, False),
        ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}, False),
    ],
    ids=["auth-mode-unset", "no-token", "wrong-token"],
)
def test_driver_without_the_cluster_token_is_told_in_one_line_what_to_set(
    cluster, world, tmp_path, settings, has_token_file
):
    home = tmp_path / "home"
    if has_token_file:
        shutil.copytree(cluster.home, home)
    # Ray retries a refused connection for 20 s before it gives up; one try is enough here
    env = ray_free_env(home, RAY_gcs_server_port_wait_time_s="1", **LOOPBACK_DRIVER, **settings)
    out = tmp_path / "shards"
    result = run_ovdet(shard_command(world.plain / "data.yaml", out, "--ray-address", cluster.address), env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"ovdet: error: Ray cluster {cluster.address} wants its authentication token: set RAY_AUTH_MODE=token "
        "and the token (`ray get-auth-token` on the head prints it) in RAY_AUTH_TOKEN, in the file "
        "RAY_AUTH_TOKEN_PATH names, or in ~/.ray/auth_token"
    )
    assert not (out / "manifest.json").exists()
