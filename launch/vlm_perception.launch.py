"""Launch vlm_perception_node.

    ros2 launch vlm_perception vlm_perception.launch.py \
        camera_topic:=/camera/color/image_raw namespace:=perception \
        params_file:=/path/to/my_params.yaml

Arguments:
  camera_topic    image topic to subscribe (sensor_msgs/Image; with camera.transport "compressed" or
                  "both" also <camera_topic>/compressed, sensor_msgs/CompressedImage)
  params_file     parameters (defaults: the package's config/vlm_perception.yaml)
  namespace       namespace of the node (topics become /<namespace>/vlm_perception/detections, ...)
  log_level       ROS log level of the node
  fastdds_profile Fast DDS XML profile the node starts with (FASTRTPS_DEFAULT_PROFILES_FILE).
                  Default: $FASTRTPS_DEFAULT_PROFILES_FILE when set, else the package's
                  config/fastdds_large_data.xml (a 32 MB shared-memory segment, so that raw frames
                  over 512 KB get through); '' starts the node without a profile. The camera
                  driver needs the same profile: see the README, "QoS and large images".
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable, UnsetEnvironmentVariable
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, NotEqualsSubstitution, PythonExpression
from launch_ros.actions import Node

# Fast DDS 2.x (ROS 2 Jazzy) reads this variable; Fast DDS 3 reads FASTDDS_DEFAULT_PROFILES_FILE.
PROFILE_VAR = "FASTRTPS_DEFAULT_PROFILES_FILE"


def generate_launch_description():
    share = get_package_share_directory("vlm_perception")
    default_params = os.path.join(share, "config", "vlm_perception.yaml")
    # a profile the user exported wins over the bundled one
    default_profile = os.environ.get(PROFILE_VAR, os.path.join(share, "config", "fastdds_large_data.xml"))
    camera_topic = LaunchConfiguration("camera_topic")
    profile = LaunchConfiguration("fastdds_profile")
    use_profile = NotEqualsSubstitution(profile, "")
    return LaunchDescription([
        DeclareLaunchArgument("camera_topic", default_value="/camera/image_raw",
                              description="Image topic (sensor_msgs/Image); <topic>/compressed for CompressedImage"),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="Parameters file (see config/vlm_perception.yaml)"),
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node"),
        DeclareLaunchArgument("log_level", default_value="info", description="ROS log level"),
        DeclareLaunchArgument("fastdds_profile", default_value=default_profile,
                              description="Fast DDS XML profile for the node ('' for none); the camera "
                                          "driver should use the same one"),
        # Fast DDS reads the variable when the process creates its participant, so it has to be in
        # the node's environment at start; it also applies to processes launched after this one.
        SetEnvironmentVariable(PROFILE_VAR, profile, condition=IfCondition(use_profile)),
        UnsetEnvironmentVariable(PROFILE_VAR, condition=UnlessCondition(use_profile)),
        Node(
            package="vlm_perception",
            executable="vlm_perception_node",
            name="vlm_perception",
            namespace=LaunchConfiguration("namespace"),
            parameters=[LaunchConfiguration("params_file")],
            # the node subscribes `image` (camera.topic) and `image/compressed`
            remappings=[
                ("image", camera_topic),
                ("image/compressed", PythonExpression(["'", camera_topic, "' + '/compressed'"])),
            ],
            arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
            output="screen",
            emulate_tty=True,
        ),
    ])
