//! `vlm_perception_node`: the ROS 2 front end (feature `ros`). Work in progress.

fn main() {
    eprintln!("vlm_perception_node is not built yet");
    std::process::exit(1);
}
