"""What every gspose_ros node shares: parameters with descriptions, latest-wins frame
handling with its counts, camera image/info pairing by stamp, and the registered objects on disk."""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading
import time
from collections import OrderedDict
from typing import Callable

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from std_msgs.msg import String

from ..core.detect import DetectorConfig
from ..core.errors import InputError
from ..core.frontend import FrontEndConfig
from ..core.registry import Registry
from .conversions import camera_info_to_K, image_to_rgb, stamp_ns

REGISTRY_EVENTS = "/gspose/registry_events"
# registry events must reach nodes that start later: keep the last few for late joiners
EVENTS_QOS = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
SENSOR_QOS = qos_profile_sensor_data
# stage-to-stage topics: a small reliable queue (the consumer drops stale frames itself)
STAGE_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)


def declare(node: Node, name: str, default, description: str):
    """Declare a parameter with its description; returns its value."""
    return node.declare_parameter(name, default, ParameterDescriptor(description=description)).value


class LatestSlot:
    """Latest-wins hand-off to one worker thread: a message arriving while the worker is busy
    replaces the waiting one (counted as dropped), so the worker never falls behind the camera."""

    def __init__(self, work: Callable, on_error: Callable[[Exception], None]):
        self._work, self._on_error = work, on_error
        self._item = None
        self._cond = threading.Condition()
        self._stop = False
        self.received = 0
        self.dropped = 0
        self.processed = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def put(self, item) -> None:
        with self._cond:
            self.received += 1
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._item is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                item, self._item = self._item, None
            try:
                self._work(item)
            except Exception as exc:  # a bad frame must never kill the worker
                self.failed += 1
                self._on_error(exc)
            self.processed += 1

    def counts(self) -> str:
        """What came in and what became of it, for the node's periodic log line."""
        return (f"{self.received} received, {self.processed} processed ({self.failed} failed), "
                f"{self.dropped} dropped while busy")

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()


def log_counts_periodically(node: Node, describe: Callable[[], str]) -> None:
    """Declare `stats_period_s` and log describe() (a node's message counts) that often, when it
    changed: a graph that publishes no pose says at which node and stage the frames stopped."""
    period = declare(node, "stats_period_s", 30.0,
                     "Log this node's message counts this often, when they changed (0: never)")
    if period <= 0:
        return
    last = [""]

    def tick():
        text = describe()
        if text != last[0]:
            last[0] = text
            node.get_logger().info(text)

    node.create_timer(float(period), tick)


class CameraPairing:
    """Pairs images with the camera_info of the same stamp (falls back to the nearest one
    within `tolerance_s`, as drivers that stamp them separately need)."""

    def __init__(self, tolerance_s: float, keep: int = 30):
        self.tolerance_ns = int(tolerance_s * 1e9)
        self._infos: OrderedDict[int, object] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()
        self.received = 0

    def add_info(self, msg) -> None:
        with self._lock:
            self.received += 1
            self._infos[stamp_ns(msg.header.stamp)] = msg
            while len(self._infos) > self._keep:
                self._infos.popitem(last=False)

    def info_for(self, image_msg):
        t = stamp_ns(image_msg.header.stamp)
        with self._lock:
            if t in self._infos:
                return self._infos[t]
            if not self._infos:
                return None
            nearest = min(self._infos, key=lambda s: abs(s - t))
            return self._infos[nearest] if abs(nearest - t) <= self.tolerance_ns else None

    def frame(self, image_msg, wait_s: float = 0.1):
        """(rgb, K, camera_info) of an image message; InputError when unusable or unpaired.
        The two topics arrive independently: the camera_info may trail its image a little."""
        info = self.info_for(image_msg)
        deadline = time.monotonic() + wait_s
        while info is None and time.monotonic() < deadline:
            time.sleep(0.005)
            info = self.info_for(image_msg)
        if info is None:
            raise InputError("no camera_info with this image's stamp yet")
        rgb = image_to_rgb(image_msg)
        return rgb, camera_info_to_K(info, rgb.shape[1], rgb.shape[0]), info


class RegisteredObjects:
    """The objects in the on-disk registry, loaded on start and reloaded on registry events;
    `derive` turns a loaded 3DGO into what this node needs (e.g. a template bank)."""

    def __init__(self, node: Node, registry_dir: str, derive: Callable, only: list[str] | None = None):
        self.node = node
        self.registry = Registry(registry_dir)
        self.derive = derive
        self.only = set(only or [])
        self._objects: dict[str, tuple[str, object]] = {}  # id -> (version, derived)
        self._lock = threading.Lock()
        for object_id in self.registry.list():
            self.reload(object_id)
        node.create_subscription(String, REGISTRY_EVENTS, self._on_event, EVENTS_QOS)

    def _on_event(self, msg: String) -> None:
        parts = msg.data.split()
        if len(parts) >= 2 and parts[0] == "removed":
            with self._lock:
                self._objects.pop(parts[1], None)
        elif len(parts) >= 2 and parts[0] == "registered":
            # loading (and deriving) can take seconds: never in the executor's callback
            threading.Thread(target=self.reload, args=(parts[1],), daemon=True).start()

    def reload(self, object_id: str) -> None:
        if self.only and object_id not in self.only:
            return
        try:
            version = self.registry.current_version(object_id)
            with self._lock:
                if version is None or self._objects.get(object_id, (None,))[0] == version:
                    return
            obj, _ = self.registry.load(object_id)
            derived = self.derive(object_id, obj)
        except InputError as exc:
            self.node.get_logger().error(f"cannot load object {object_id!r}: {exc}")
            return
        with self._lock:  # the old version served estimation until this moment
            self._objects[object_id] = (version, derived)
        self.node.get_logger().info(f"object {object_id!r} {version} loaded")

    def items(self) -> list[tuple[str, object]]:
        with self._lock:
            return [(k, v[1]) for k, v in sorted(self._objects.items())]

    def get(self, object_id: str):
        with self._lock:
            entry = self._objects.get(object_id)
        return None if entry is None else entry[1]


def declare_frontend(node: Node, detection: bool = False, retrieval: bool = False) -> FrontEndConfig:
    """The front-end backend parameters (and the detection / retrieval ones a node needs)."""
    cfg = FrontEndConfig(
        backend=declare(node, "backend", "weight_free",
                        "Front end: weight_free (CPU, no files) or learned (GS-Pose network, needs model_weights)"),
        learned={
            "model_weights": declare(node, "model_weights", "",
                                     "learned: GS-Pose model_weights.pth / .safetensors (local path, never downloaded)"),
            "dinov2_weights": declare(node, "dinov2_weights", "",
                                      "learned: DINOv2 ViT-B/14 checkpoint, if model_weights lacks the backbone"),
            "device": declare(node, "device", "cpu", "learned: torch device for the network (cpu, cuda, cuda:1)"),
        })
    if detection:
        cfg.detector = DetectorConfig(
            work_width=declare(node, "work_width", DetectorConfig.work_width,
                               "weight_free: width (px) of the copy proposals are searched in; objects' "
                               "texture models are learned at 320, another width blurs that cue"),
            score_views=declare(node, "score_views", DetectorConfig.score_views,
                                "weight_free: a mask's score is its mean similarity to this many best-matching "
                                "reference views (the object seen from one side)"))
    if retrieval:
        cfg.template_viewpoints = declare(node, "template_viewpoints", cfg.template_viewpoints,
                                          "weight_free: template viewpoints over the sphere (~10 deg apart)")
        cfg.template_inplane = declare(node, "template_inplane", cfg.template_inplane,
                                       "weight_free: in-plane rotations per viewpoint (15 deg apart)")
    return cfg


def run_nodes(node_classes: list[type], argv=None) -> int:
    """rclpy.init, construct the nodes, spin them. A node that cannot start (e.g. a checkpoint
    that is missing or does not fit) says why on stderr and the process exits with status 2.
    SIGUSR1 prints every thread's Python stack to stderr (`kill -USR1 <pid>`): where a node that
    has gone quiet is waiting."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    rclpy.init(args=argv if argv is not None else sys.argv)
    try:
        nodes = [cls() for cls in node_classes]
    except InputError as exc:
        print(f"gspose_ros: cannot start: {exc}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 2
    return spin_nodes(nodes)


def spin_nodes(nodes: list[Node]) -> int:
    """Spin nodes on one multi-threaded executor until shutdown (Ctrl-C is a clean exit)."""
    executor = MultiThreadedExecutor(num_threads=4)
    for n in nodes:
        executor.add_node(n)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for n in nodes:
            n.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    return 0
