"""ros2 launch gspose_ros pose.launch.py [use_rviz:=true] [config:=...] [image:=...] [camera_info:=...]
[single_process:=false] [synthetic_camera:=false] [dds_profile:=...]

Starts registration, detector, retrieval and refiner/tracker nodes (or all of them in one
process), with parameters from config/gspose.yaml and remappable camera topics. Every process
it starts gets config/fastdds.xml as its Fast DDS profile (sized for camera images; see that
file) unless FASTDDS_DEFAULT_PROFILES_FILE or dds_profile:= names another."""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node

NODES = ["registration_node", "detector_node", "retrieval_node", "refiner_node"]


def generate_launch_description():
    share = get_package_share_directory("gspose_ros")
    config = LaunchConfiguration("config")
    remaps = [("/camera/image_raw", LaunchConfiguration("image")),
              ("/camera/camera_info", LaunchConfiguration("camera_info"))]
    separate = UnlessCondition(LaunchConfiguration("single_process"))
    actions = [
        DeclareLaunchArgument("config", default_value=os.path.join(share, "config", "gspose.yaml"),
                              description="Parameter file"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw", description="Camera image topic"),
        DeclareLaunchArgument("camera_info", default_value="/camera/camera_info", description="Camera info topic"),
        DeclareLaunchArgument("use_rviz", default_value="false", description="Start rviz2 with config/gspose.rviz"),
        DeclareLaunchArgument("single_process", default_value="false",
                              description="Run every node in one process (pose_pipeline)"),
        DeclareLaunchArgument("synthetic_camera", default_value="false",
                              description="Publish the built-in demo sequence as the camera"),
        DeclareLaunchArgument("dds_profile",
                              default_value=EnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE",
                                                                default_value=os.path.join(share, "config", "fastdds.xml")),
                              description="Fast DDS XML profile for the started processes (the default is sized "
                                          "for camera images; the camera driver should use it too)"),
        SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", LaunchConfiguration("dds_profile")),
    ]
    actions += [Node(package="gspose_ros", executable=exe, parameters=[config], remappings=remaps, output="screen",
                     condition=separate) for exe in NODES]
    actions.append(Node(package="gspose_ros", executable="pose_pipeline", parameters=[config], remappings=remaps,
                        output="screen", condition=IfCondition(LaunchConfiguration("single_process"))))
    actions.append(Node(package="gspose_ros", executable="synthetic_camera_node", parameters=[config],
                        remappings=remaps, output="screen", condition=IfCondition(LaunchConfiguration("synthetic_camera"))))
    actions.append(Node(package="rviz2", executable="rviz2", arguments=["-d", os.path.join(share, "rviz", "gspose.rviz")],
                        condition=IfCondition(LaunchConfiguration("use_rviz"))))
    return LaunchDescription(actions)
