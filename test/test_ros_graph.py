"""The ROS 2 package over real DDS: node executables started as processes (as ros2 launch
would), a client that knows only the service/topic contract, ground-truth checks.

Needs the colcon-built package (scripts/build_ros.sh; `scripts/test.sh` sources it). Without
it these tests skip, unless GSPOSE_REQUIRE_ROS=1 (set by scripts/test.sh) makes that a failure.
"""

import os
import signal
import time

import numpy as np
import pytest

try:
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from rclpy.node import Node
    from sensor_msgs.msg import CameraInfo, Image

    from gspose_ros.nodes.conversions import K_to_camera_info, pose_to_matrix, register_request, rgb_to_image
    from gspose_ros.nodes.graph import NodeGraph
    from gspose_ros.nodes.registration import reference_dir_views
    from gspose_ros.srv import ListObjects, RegisterObject, RemoveObject
    ROS_ERROR = None
except ImportError as exc:  # not built / not sourced
    ROS_ERROR = exc

if ROS_ERROR is not None:
    if os.environ.get("GSPOSE_REQUIRE_ROS") == "1":
        raise ROS_ERROR
    pytest.skip(f"ROS 2 package not built/sourced: {ROS_ERROR}", allow_module_level=True)

from gspose_ros.core import bop, metrics  # noqa: E402
from gspose_ros.core.errors import InputError  # noqa: E402
from gspose_ros.core.frontend import store_detector_model  # noqa: E402
from gspose_ros.core.registry import Registry  # noqa: E402

SENSOR = rclpy.qos.qos_profile_sensor_data if ROS_ERROR is None else None
# private DDS domains, one pair per run of the suite (from its process id): with fixed ones, two
# runs on one machine registered, listed and removed each other's objects (/list_objects answered
# with the other run's registry). 20..219: inside Fast DDS's port range (domain ids up to 232)
GRAPH_DOMAIN = 20 + 2 * (os.getpid() % 100)
PIPELINE_DOMAIN = GRAPH_DOMAIN + 1


def _registry_holding_the_duck(registry_dir, built_duck, dataset) -> str:
    """A registry with the session's fitted duck and its detector colour model, as registration saves it."""
    loaded = [f.load() for f in bop.load_split_frames(dataset, "train", 3)]
    store_detector_model(built_duck, [i for i, _ in loaded], [m for _, m in loaded])
    Registry(registry_dir).save("duck", built_duck, {"source": "test fixture"})
    return registry_dir


@pytest.fixture(scope="module")
def graph(tmp_path_factory, built_duck, dataset, quick_fit_min_score):
    """Registration, detector, retrieval and refiner processes sharing a registry that already
    holds the duck (fitted by the session fixture)."""
    registry_dir = _registry_holding_the_duck(str(tmp_path_factory.mktemp("registry")), built_duck, dataset)
    # a private DDS domain: tests running in parallel elsewhere must not see each other
    g = NodeGraph(log_dir=str(tmp_path_factory.mktemp("logs")), env={"ROS_DOMAIN_ID": str(GRAPH_DOMAIN)})
    os.environ["ROS_DOMAIN_ID"] = str(GRAPH_DOMAIN)
    g.start("registration", registry_dir=registry_dir, build_iterations=60)
    g.start("detector", registry_dir=registry_dir)
    # two hypotheses per detection: the refiner refines both and keeps the better-checking one
    g.start("retrieval", registry_dir=registry_dir, hypotheses=2)
    # the session's duck is quickly fitted: the pose bar for it (conftest)
    g.start("refiner", registry_dir=registry_dir, tracking=False, publish_overlay=True, min_score=quick_fit_min_score)
    rclpy.init()
    client = Node("gspose_test_client")
    yield g, client, registry_dir
    client.destroy_node()
    rclpy.shutdown()
    g.stop()


def call(client, srv_type, name, request, timeout=300.0):
    cli = client.create_client(srv_type, name)
    assert cli.wait_for_service(timeout_sec=60.0), f"{name} not available"
    future = cli.call_async(request)
    rclpy.spin_until_future_complete(client, future, timeout_sec=timeout)
    assert future.done(), f"{name} did not answer in {timeout} s"
    client.destroy_client(cli)
    return future.result()


# This test found a transport problem: with Fast DDS's defaults (512 KB shared-memory segment,
# 208 KB UDP receive buffer, both under one 0.9 MB image) the pipeline process at times received
# no camera image for minutes (2 of 10 runs; over UDP only, the kernel counted the dropped
# datagrams). conftest and NodeGraph now give every process config/fastdds.xml (README, "Camera
# images between processes"). It runs first in this module, one DDS participant in the test
# process, as a camera driver's; a failure's message gives each stage's message count and the
# pipeline's log (its count lines and thread stacks).
def test_pose_pipeline_runs_every_node_in_one_process(built_duck, dataset, tmp_path, quick_fit_min_score):
    """`ros2 run gspose_ros pose_pipeline`: the same contract from one process, parameters from a
    params file (overrides cannot reach its several nodes, so NodeGraph refuses them)."""
    import yaml
    from rclpy.executors import SingleThreadedExecutor

    from gspose_ros.nodes.graph import default_config

    registry_dir = _registry_holding_the_duck(str(tmp_path / "registry"), built_duck, dataset)
    with open(default_config()) as fh:
        config = yaml.safe_load(fh)
    config["/**"]["ros__parameters"]["registry_dir"] = registry_dir
    config["/**"]["ros__parameters"]["stats_period_s"] = 2.0  # a failure's log says where frames stopped
    config["gspose_refiner"]["ros__parameters"]["tracking"] = False
    config["gspose_refiner"]["ros__parameters"]["min_score"] = quick_fit_min_score  # as the graph fixture
    params = tmp_path / "pipeline.yaml"
    params.write_text(yaml.safe_dump(config))
    g = NodeGraph(config=str(params), log_dir=str(tmp_path / "logs"), env={"ROS_DOMAIN_ID": str(PIPELINE_DOMAIN)})
    with pytest.raises(ValueError, match="params file"):
        g.start("pipeline", tracking=False)
    g.start("pipeline")
    # a context of its own on the pipeline's domain (the module's graph, started after this test, has another)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=PIPELINE_DOMAIN)
    client = Node("gspose_pipeline_test_client", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(client)
    try:
        cli = client.create_client(ListObjects, "/list_objects")
        assert cli.wait_for_service(timeout_sec=60.0), "/list_objects not available"
        future = cli.call_async(ListObjects.Request())
        executor.spin_until_future_complete(future, timeout_sec=60.0)
        assert future.done() and "duck" in future.result().object_ids
        from gspose_ros.msg import DetectionArray, ObjectPoseArray
        from gspose_ros.nodes.common import STAGE_QOS

        poses, stages = [], {"detections": 0, "initial poses": 0}
        client.create_subscription(PoseStamped, "/object_pose", poses.append, 10)
        # what each stage sent: a failure says where the image stopped
        client.create_subscription(DetectionArray, "/gspose/detections",
                                   lambda _m: stages.__setitem__("detections", stages["detections"] + 1), STAGE_QOS)
        client.create_subscription(ObjectPoseArray, "/gspose/initial_poses",
                                   lambda _m: stages.__setitem__("initial poses", stages["initial poses"] + 1),
                                   STAGE_QOS)
        image_pub = client.create_publisher(Image, "/camera/image_raw", SENSOR)
        info_pub = client.create_publisher(CameraInfo, "/camera/camera_info", SENSOR)
        # the detector and the refiner both take the camera: wait until DDS has matched them, so a
        # failure below is the pipeline's, not discovery's
        matched = time.monotonic() + 60.0
        while image_pub.get_subscription_count() < 2 and time.monotonic() < matched:
            executor.spin_once(timeout_sec=0.1)
        assert image_pub.get_subscription_count() >= 2, "the pipeline's nodes never subscribed to /camera/image_raw"
        # the test views in turn: how many the quickly-fitted duck is found in varies (see above)
        views = [(f, f.load()[0]) for f in bop.load_split_frames(dataset, "test", 3)]
        deadline = time.monotonic() + 180.0  # start-up: the duck's template bank, numba compilation
        sent = 0
        while not poses and time.monotonic() < deadline:
            f, image = views[sent % len(views)]
            sent += 1
            msg = rgb_to_image(image, encoding="rgb8")
            msg.header.stamp, msg.header.frame_id = client.get_clock().now().to_msg(), "pipeline_camera"
            info_pub.publish(K_to_camera_info(f.K, image.shape[1], image.shape[0], msg.header))
            image_pub.publish(msg)
            end = time.monotonic() + 3.0
            while not poses and time.monotonic() < end:
                executor.spin_once(timeout_sec=0.1)
        if not poses:  # where each thread of the pipeline is: its stacks go to its log (run_nodes)
            os.kill(g.procs["pipeline"].pid, signal.SIGUSR1)
            time.sleep(1.0)
        with open(tmp_path / "logs" / "pipeline.log") as fh:
            log = fh.read()[-12000:]
        assert poses, (f"the pipeline published no /object_pose for {sent} views of the registered duck "
                       f"(messages seen: {stages}); its log:\n{log}")
        assert poses[0].header.frame_id == "pipeline_camera" and poses[0].pose.position.z > 0
        assert all(g.alive().values())
    finally:
        executor.shutdown()
        client.destroy_node()
        rclpy.shutdown(context=context)
        g.stop()


def test_bad_registration_requests_fail_cleanly_and_nodes_stay_up(graph, dataset):
    g, client, _ = graph
    f = bop.load_split_frames(dataset, "train", 2)[0]
    image, mask = f.load()
    good = dict(object_id="ok_id", images=[image], poses=[f.T], K=f.K, masks=[mask])

    def request(**change):
        args = dict(good, **change)
        return register_request(args["object_id"], args["images"], args["poses"], args["K"], args["masks"])

    bad = {"empty id": (request(object_id=""), "object id"),
           "path in id": (request(object_id="../evil"), "object id"),
           "no views": (request(images=[], poses=[], masks=[]), "no reference views"),
           "count mismatch": (request(poses=[f.T, f.T]), "mismatched counts"),
           "zero focal": (request(K=np.diag([0.0, 0.0, 1.0])), "focal")}
    wrong_encoding = request()
    wrong_encoding.images[0].encoding = "32FC1"
    bad["wrong encoding"] = (wrong_encoding, "encoding")
    nan_pose = request()
    nan_pose.poses[0].position.x = float("nan")
    bad["NaN pose"] = (nan_pose, "non-finite")
    short_data = request()
    short_data.images[0].data = bytes(10)
    bad["truncated image"] = (short_data, "data bytes")
    bad["reference_dir while disabled"] = (register_request("x", [], [], f.K, reference_dir="../../etc"), "disabled")
    for what, (req, expected) in bad.items():
        res = call(client, RegisterObject, "/register_object", req)
        assert not res.success, what
        assert expected in res.message.lower() or expected in res.message, (what, res.message)
    res = call(client, RemoveObject, "/remove_object", RemoveObject.Request(object_id="never_registered"))
    assert not res.success and "unknown" in res.message
    assert all(g.alive().values()), g.alive()
    assert "duck" in call(client, ListObjects, "/list_objects", ListObjects.Request()).object_ids


def test_reference_dir_must_stay_inside_its_root(dataset, tmp_path):
    images, masks, poses, Ks = reference_dir_views("train/000003", dataset)
    assert len(images) == len(masks) == len(poses) == len(Ks) == 32
    with pytest.raises(InputError, match="outside"):
        reference_dir_views("../..", dataset)
    os.symlink("/etc", tmp_path / "escape")
    with pytest.raises(InputError, match="outside"):
        reference_dir_views("escape", str(tmp_path))
    with pytest.raises(InputError, match="does not exist"):
        reference_dir_views("train/999999", dataset)


def test_register_list_and_remove_through_services(graph, dataset):
    g, client, registry_dir = graph
    frames = bop.load_split_frames(dataset, "train", 2)[::2]
    loaded = [f.load() for f in frames]
    req = register_request("bracket", [i for i, _ in loaded], [f.T for f in frames], frames[0].K,
                           [m for _, m in loaded])
    res = call(client, RegisterObject, "/register_object", req)
    assert res.success, res.message
    assert res.views_used == len(frames) and res.version == "v000001" and res.build_seconds > 0
    listed = call(client, ListObjects, "/list_objects", ListObjects.Request())
    assert set(listed.object_ids) >= {"duck", "bracket"}
    assert os.path.isfile(os.path.join(registry_dir, "bracket", "v000001", "model.safetensors"))
    res = call(client, RemoveObject, "/remove_object", RemoveObject.Request(object_id="bracket"))
    assert res.success
    assert "bracket" not in call(client, ListObjects, "/list_objects", ListObjects.Request()).object_ids


def test_object_pose_from_published_images(graph, dataset):
    """Images in, /object_pose out: same stamp and frame, T_camera_object close to ground truth."""
    g, client, _ = graph
    image_pub = client.create_publisher(Image, "/camera/image_raw", SENSOR)
    info_pub = client.create_publisher(CameraInfo, "/camera/camera_info", SENSOR)
    poses = {}
    client.create_subscription(PoseStamped, "/object_pose",
                               lambda m: poses.__setitem__((m.header.stamp.sec, m.header.stamp.nanosec), m), 10)
    pts = bop.load_model_points(dataset, 3)
    d = bop.load_models_info(dataset)[3]["diameter"] / 1000
    frames = bop.load_split_frames(dataset, "test", 3)
    errors = []
    for f in frames:
        image, _ = f.load()
        stamp = client.get_clock().now().to_msg()
        msg = rgb_to_image(image, encoding="bgr8")  # a camera driver's usual encoding
        msg.header.stamp, msg.header.frame_id = stamp, "test_camera"
        info = K_to_camera_info(f.K, image.shape[1], image.shape[0], msg.header)
        key = (stamp.sec, stamp.nanosec)
        deadline = time.monotonic() + 90.0  # the first frame waits for node start-up and compilation
        while key not in poses and time.monotonic() < deadline:
            info_pub.publish(info)
            image_pub.publish(msg)
            end = time.monotonic() + 3.0
            while key not in poses and time.monotonic() < end:
                rclpy.spin_once(client, timeout_sec=0.1)
        if key in poses:
            assert poses[key].header.frame_id == "test_camera"
            errors.append(metrics.add(pose_to_matrix(poses[key].pose), f.T, pts))
        else:
            errors.append(np.inf)
    # measured 1 of these 4 hard (random-rotation, new-lighting) views within 0.1d through the
    # node graph with the quickly-fitted test duck; a broken graph (no poses, wrong frame,
    # wrong units or convention) gets none. How many of the 4 are found at all varies with the
    # 60-step fit (parallel float sums): 2 in one of the last clean-clone CI runs, at least 3 in
    # the others, so 2 is the bar; the found rate itself is gspose-eval's to measure (RESULTS.md).
    assert np.sum(np.array(errors) < 0.1 * d) >= 1, errors
    assert np.isfinite(errors).sum() >= 2, errors
    assert all(g.alive().values())


def _detection_of_the_duck(client, dataset, index):
    """A DetectionArray carrying test frame `index` of the duck and its ground-truth mask."""
    from std_msgs.msg import Header

    from gspose_ros.msg import DetectionArray, ObjectDetection
    from gspose_ros.nodes.conversions import mask_to_image

    f = bop.load_split_frames(dataset, "test", 3)[index]
    image, gt = f.load()
    ys, xs = np.nonzero(gt)
    header = Header(stamp=client.get_clock().now().to_msg(), frame_id="test_camera")
    sent = DetectionArray(header=header, image=rgb_to_image(image, header=header),
                          camera_info=K_to_camera_info(f.K, image.shape[1], image.shape[0], header))
    sent.detections.append(ObjectDetection(object_id="duck", score=0.9, mask=mask_to_image(gt),
                                           box=[float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]))
    return sent, image


def _initial_poses_for(client, topic, sent, status=None, timeout=120.0):
    """Publish `sent` on `topic` until the retrieval node answers it; its poses of `status` (None: all)."""
    from gspose_ros.msg import DetectionArray, ObjectPoseArray

    stamp = (sent.header.stamp.sec, sent.header.stamp.nanosec)
    answers = []
    sub = client.create_subscription(ObjectPoseArray, "/gspose/initial_poses",
                                     lambda m: answers.append(m) if (m.header.stamp.sec, m.header.stamp.nanosec) == stamp
                                     else None, 10)
    pub = client.create_publisher(DetectionArray, topic, 10)
    deadline = time.monotonic() + timeout
    while not answers and time.monotonic() < deadline:
        pub.publish(sent)  # again until answered: a node still loading the object skips what comes first
        end = time.monotonic() + 5.0
        while not answers and time.monotonic() < end:
            rclpy.spin_once(client, timeout_sec=0.1)
    client.destroy_subscription(sub)
    client.destroy_publisher(pub)
    assert answers, f"retrieval did not answer on {topic}"
    return [p for p in answers[0].poses if status is None or p.status == status]


def test_retrieval_sends_distinct_hypotheses_per_detection(graph, dataset):
    """hypotheses=2 (set for this graph): two entries for the one detection, best first, with the
    detection's mask and box, rotations at least 30 deg apart (retrieve.distinct_hypotheses), then
    the alternatives the refiner refines too (estimator.second_opinion): the best >= 30 deg
    (alternative_near_deg) from both, and the best >= 90 deg from both where that is another."""
    from gspose_ros.core.geometry import rotation_error_deg
    from gspose_ros.msg import ObjectPoseEstimate

    g, client, _ = graph
    sent, image = _detection_of_the_duck(client, dataset, 2)
    everything = _initial_poses_for(client, "/gspose/detections", sent)
    poses = [p for p in everything if p.status == ObjectPoseEstimate.STATUS_INITIAL]
    alternatives = [p for p in everything if p.status == ObjectPoseEstimate.STATUS_INITIAL_ALTERNATIVE]
    assert [p.object_id for p in poses] == ["duck", "duck"] and everything[:2] == poses
    assert [p.object_id for p in alternatives] in (["duck"], ["duck", "duck"]) and everything[2:] == alternatives
    assert all(p.mask.height == image.shape[0] and list(p.box) == list(sent.detections[0].box) for p in everything)
    T0, T1 = (pose_to_matrix(p.pose) for p in poses)
    near, far = pose_to_matrix(alternatives[0].pose), pose_to_matrix(alternatives[-1].pose)
    assert rotation_error_deg(T0, T1) >= 30.0
    assert rotation_error_deg(near, T0) >= 30.0 and rotation_error_deg(near, T1) >= 30.0
    assert rotation_error_deg(far, T0) >= 90.0 and rotation_error_deg(far, T1) >= 90.0
    assert all(g.alive().values())


def test_retrieval_answers_re_cut_masks_as_second_pass_poses(graph, dataset):
    """The second pass's hand-off over DDS: masks on /gspose/recut_detections (what the refiner
    sends after cutting a rejected pose's object again, estimator.second_pass_masks) come back from
    the retrieval node as STATUS_INITIAL_RECUT poses, one per mask with that mask, in the order of
    retrieval's check (the refiner refines them in turn until one checks >= recut_below).
    (Whether the refiner rejects a given pose depends on the 3DGO's fit: the cut itself is
    tested in test_cascade.py.)"""
    from gspose_ros.msg import ObjectDetection, ObjectPoseEstimate
    from gspose_ros.nodes.conversions import image_to_mask, mask_to_image

    g, client, _ = graph
    sent, image = _detection_of_the_duck(client, dataset, 1)
    whole = image_to_mask(sent.detections[0].mask)
    # a second mask, the duck's left half: a worse silhouette, which retrieval's check should rank second
    half = whole.copy()
    xs = np.nonzero(whole.any(axis=0))[0]
    half[:, (xs.min() + xs.max()) // 2:] = False
    ys, hx = np.nonzero(half)
    sent.detections.insert(0, ObjectDetection(object_id="duck", score=0.9, mask=mask_to_image(half),
                                              box=[float(hx.min()), float(ys.min()), float(hx.max() + 1),
                                                   float(ys.max() + 1)]))
    second = _initial_poses_for(client, "/gspose/recut_detections", sent)
    # one hypothesis per re-cut mask, as the Estimator's second pass (the graph sends two and an
    # alternative otherwise)
    assert len(second) == 2 and all(p.status == ObjectPoseEstimate.STATUS_INITIAL_RECUT for p in second), second
    assert all(p.object_id == "duck" and p.mask.height == image.shape[0] for p in second)
    masks = [image_to_mask(p.mask) for p in second]
    assert np.array_equal(masks[0], whole) and np.array_equal(masks[1], half)  # the whole duck checks better
    for p in second:
        T = pose_to_matrix(p.pose)
        assert np.all(np.isfinite(T)) and T[2, 3] > 0
    assert all(g.alive().values())


def test_latest_slot_keeps_the_newest_frame_counts_and_survives_a_failing_one():
    """The hand-off every node's frames go through: frames arriving while the worker is busy
    replace each other (counted as dropped), a frame whose processing raises is counted as
    failed and the worker goes on; the counts are what the nodes' periodic log line reports."""
    import threading

    from gspose_ros.nodes.common import LatestSlot

    busy, done, seen, errors = threading.Event(), threading.Event(), [], []

    def work(item):
        seen.append(item)
        if item == "first":
            busy.wait(10.0)
        if item == "bad":
            raise ValueError("corrupt frame")
        if item == "last":
            done.set()

    slot = LatestSlot(work, errors.append)
    try:
        slot.put("first")
        deadline = time.monotonic() + 10.0
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        for item in ("a", "b", "bad"):  # arrive while "first" is processed: only the newest waits
            slot.put(item)
        busy.set()
        deadline = time.monotonic() + 10.0
        while slot.processed < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        slot.put("last")
        assert done.wait(10.0), "the worker stopped after a failing frame"
        assert seen == ["first", "bad", "last"]
        assert [str(e) for e in errors] == ["corrupt frame"]
        deadline = time.monotonic() + 10.0
        while slot.processed < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (slot.received, slot.processed, slot.failed, slot.dropped) == (5, 3, 1, 2)
        assert slot.counts() == "5 received, 3 processed (1 failed), 2 dropped while busy"
    finally:
        slot.stop()
