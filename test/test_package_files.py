"""Checks of the ROS 2 package files that need no ROS install: the launch file names only
executables that exist and are installed, the config only parameters the nodes declare,
the interfaces keep the field names clients depend on. Where the `launch` package is
installed (a real ROS 2), the launch description is also built."""

import ast
import os
import re
import xml.etree.ElementTree as ET

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def launch_executables() -> set[str]:
    tree = ast.parse(read("launch", "pose.launch.py"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "NODES" for t in node.targets):
            names |= {elt.value for elt in node.value.elts}
        if isinstance(node, ast.keyword) and node.arg == "executable" and isinstance(node.value, ast.Constant):
            names.add(node.value.value)
    return names - {"rviz2"}


def test_launch_file_names_only_installed_executables():
    names = launch_executables()
    assert {"registration_node", "detector_node", "retrieval_node", "refiner_node", "pose_pipeline"} <= names
    cmake = read("CMakeLists.txt")
    for exe in names:
        assert os.access(os.path.join(ROOT, "bin", exe), os.X_OK), exe
        assert f"bin/{exe}" in cmake, f"{exe} not installed by CMakeLists.txt"


def test_config_sets_only_declared_parameters():
    config = yaml.safe_load(read("config", "gspose.yaml"))
    sources = {f: read("gspose_ros", "nodes", f) for f in os.listdir(os.path.join(ROOT, "gspose_ros", "nodes"))
               if f.endswith(".py")}
    node_names = {re.search(r'super\(\).__init__\("(\w+)"', s).group(1): s for s in sources.values()
                  if 'super().__init__("' in s}
    for section, body in config.items():
        params = body["ros__parameters"]
        # common.py's helpers (declare_frontend) declare parameters on the nodes that call them
        scope = sources.values() if section == "/**" else [node_names[section], sources["common.py"]]
        for name in params:
            assert any(f'declare({who}, "{name}"' in s for s in scope for who in ("self", "node")), \
                f"{section}: {name} is not declared"


def test_package_xml_is_an_interface_package():
    root = ET.fromstring(read("package.xml"))
    assert root.findtext("name") == "gspose_ros"
    assert root.find("export/build_type").text == "ament_cmake"
    assert root.findtext("member_of_group") == "rosidl_interface_packages"


def test_every_interface_file_is_generated_and_the_contract_fields_exist():
    cmake = read("CMakeLists.txt")
    for folder in ("msg", "srv"):
        for f in os.listdir(os.path.join(ROOT, folder)):
            assert f'"{folder}/{f}"' in cmake, f"{folder}/{f} missing from rosidl_generate_interfaces"
    request, response = read("srv", "RegisterObject.srv").split("---")
    fields = lambda text: {ln.split()[1] for ln in text.splitlines() if ln.split() and not ln.startswith("#")}  # noqa: E731
    assert fields(request) >= {"object_id", "images", "masks", "poses", "camera_info", "reference_dir"}
    assert fields(response) >= {"success", "message"}


def test_launch_description_builds_where_launch_is_installed():
    pytest.importorskip("launch_ros", reason="the launch packages come with a full ROS 2 install, not the pip wheels")
    import importlib.util

    spec = importlib.util.spec_from_file_location("pose_launch", os.path.join(ROOT, "launch", "pose.launch.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.generate_launch_description().entities


def test_fastdds_profile_has_room_for_camera_images():
    """config/fastdds.xml (given to every process by the launch file, NodeGraph and conftest):
    its transports must hold whole images, or best-effort images are lost between processes."""
    ns = {"dds": "http://www.eprosima.com"}
    root = ET.fromstring(read("config", "fastdds.xml"))
    descriptors = {d.findtext("dds:transport_id", namespaces=ns): d
                   for d in root.iterfind("dds:profiles/dds:transport_descriptors/dds:transport_descriptor", ns)}
    participant = root.find("dds:profiles/dds:participant", ns)
    assert participant.get("is_default_profile") == "true"
    used = [t.text for t in participant.iterfind("dds:rtps/dds:userTransports/dds:transport_id", ns)]
    assert participant.findtext("dds:rtps/dds:useBuiltinTransports", namespaces=ns) == "false"
    kinds = {descriptors[t].findtext("dds:type", namespaces=ns): descriptors[t] for t in used}
    assert set(kinds) == {"SHM", "UDPv4"}, f"transports {sorted(kinds)}: same-host SHM and UDP between hosts"
    full_hd = 1920 * 1080 * 3
    assert int(kinds["SHM"].findtext("dds:segment_size", namespaces=ns)) >= 4 * full_hd
    for size in ("sendBufferSize", "receiveBufferSize"):
        assert int(kinds["UDPv4"].findtext(f"dds:{size}", namespaces=ns)) >= 4 * 640 * 480 * 3
    launch = read("launch", "pose.launch.py")
    assert 'SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE"' in launch and '"fastdds.xml"' in launch
