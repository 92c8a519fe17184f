"""Launch vlm_perception_node.

    ros2 launch vlm_perception vlm_perception.launch.py \
        camera_topic:=/camera/color/image_raw namespace:=perception \
        params_file:=/path/to/my_params.yaml

Arguments:
  camera_topic  image topic to subscribe (sensor_msgs/Image; with camera.transport "compressed" or
                "both" also <camera_topic>/compressed, sensor_msgs/CompressedImage)
  params_file   parameters (defaults: the package's config/vlm_perception.yaml)
  namespace     namespace of the node (topics become /<namespace>/vlm_perception/detections, ...)
  log_level     ROS log level of the node
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory("vlm_perception"), "config", "vlm_perception.yaml")
    camera_topic = LaunchConfiguration("camera_topic")
    return LaunchDescription([
        DeclareLaunchArgument("camera_topic", default_value="/camera/image_raw",
                              description="Image topic (sensor_msgs/Image); <topic>/compressed for CompressedImage"),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="Parameters file (see config/vlm_perception.yaml)"),
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of the node"),
        DeclareLaunchArgument("log_level", default_value="info", description="ROS log level"),
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
