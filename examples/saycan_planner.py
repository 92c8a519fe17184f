#!/usr/bin/env python3
"""A SayCan-style planner on top of vlm_perception_node (rclpy).

    python3 examples/saycan_planner.py --node /robot/vlm_perception \\
        --task "put the red block in the green bowl" --objects "red block, green bowl, blue cup"

SayCan (Ahn et al. 2022) picks the skill that is both useful for the task (the language model's
score) and feasible now (the affordance: are its objects visible?). Here:
  1. skills are generated from the object vocabulary: "pick up X and place it in Y";
  2. `~/score` gives each object phrase's affordance (one vision pass for all of them) and the
     scene line SayCan's tabletop prompts use ("objects = [red block, green bowl]");
  3. `language_scores` scores each skill for the task - a documented stand-in (word overlap);
     replace that one function with your LLM's log-likelihoods;
  4. the best skill = language score x affordance(X) x affordance(Y);
  5. `~/ground` turns its pick and place phrases into pixels and, with depth, 3D points
     (CLIPort-style: the segmentation peak inside the best box), printed as the plan. The points
     are in `--frame` (e.g. base_link, what a motion planner takes), transformed by the node
     with tf2 at the image's stamp; without `--frame`, in the node's `target_frame` (empty: the
     camera's optical frame). The plan names the frame (the response's position_frame_id).
Exit code 0 with a plan, 3 when no skill is feasible (its objects are not visible), 1 when a
service fails, 2 for bad arguments.
"""

import argparse
import math
import sys
import time

import rclpy
from vlm_perception_msgs.srv import Ground, Score


def language_scores(task: str, skills: list[str]) -> list[float]:
    """Stand-in for an LLM: softmax over the skills of the longest common word subsequence of
    task and skill (word order matters: "put the cat in the cup" prefers picking the cat).

    Replace with your language model: return, per skill, p(skill | task), e.g. the normalised
    likelihood of the skill text as the continuation of a prompt that describes the task."""
    def lcs(a: list[str], b: list[str]) -> int:
        row = [0] * (len(b) + 1)
        for x in a:
            prev = 0
            for j, y in enumerate(b):
                prev, row[j + 1] = row[j + 1], prev + 1 if x == y else max(row[j + 1], row[j])
        return row[-1]

    words = task.lower().replace(",", " ").split()
    z = [math.exp(lcs(words, s.lower().split())) for s in skills]
    total = sum(z)
    return [v / total for v in z]


def skills_for(objects: list[str]) -> list[tuple[str, str, str]]:
    """(skill text, pick phrase, place phrase) for every ordered pair of distinct objects."""
    return [(f"pick up the {a} and place it in the {b}", a, b) for a in objects for b in objects if a != b]


def call(node, client, request, timeout):
    if not client.wait_for_service(timeout_sec=timeout):
        raise RuntimeError(f"service {client.srv_name} is not available")
    fut = client.call_async(request)
    end = time.monotonic() + timeout
    while not fut.done():
        if time.monotonic() > end:
            raise RuntimeError(f"no answer from {client.srv_name} within {timeout} s")
        rclpy.spin_once(node, timeout_sec=0.05)
    return fut.result()


def fmt_target(t, frame: str) -> str:
    s = f"'{t.phrase}' score {t.score:.3f} at pixel ({t.pixel.x:.1f}, {t.pixel.y:.1f})"
    if t.has_point:
        s += f", 3D x={t.point.x:.3f} y={t.point.y:.3f} z={t.point.z:.3f} m in {frame}"
    else:
        s += ", no 3D point (see the message)"
    if t.has_pose:
        q = t.pose.orientation
        s += (f"\n         gripper pose: quaternion (x={q.x:.3f} y={q.y:.3f} z={q.z:.3f} w={q.w:.3f}), approach "
              f"{'from the surface' if t.approach_from_fit else 'along the camera axis'}, closing "
              f"{'across the mask' if t.closing_from_mask else 'along the camera x'}")
    return s


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--node", default="/vlm_perception", help="the node's fully qualified name")
    p.add_argument("--task", required=True, help="the instruction, e.g. 'put the red block in the green bowl'")
    p.add_argument("--objects", required=True, help="comma-separated object vocabulary")
    p.add_argument("--threshold", type=float, default=0.0,
                   help="detection score for an object to count as visible (0: the node's default)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each service")
    p.add_argument("--frame", default="",
                   help="frame of the 3D targets, e.g. base_link (default: the node's target_frame)")
    args = p.parse_args()
    objects = [o.strip() for o in args.objects.split(",") if o.strip()]
    if len(objects) < 2:
        print("need at least two objects", file=sys.stderr)
        return 2

    rclpy.init()
    node = rclpy.create_node("saycan_planner")
    try:
        score = call(node, node.create_client(Score, f"{args.node}/score"),
                     Score.Request(phrases=objects, threshold=args.threshold), args.timeout)
        if not score.success:
            print(f"~/score failed: {score.message}", file=sys.stderr)
            return 1
        affordance = {s.phrase: (s.score if s.found else 0.0) for s in score.scores}
        print(f"scene: {score.scene}")
        skills = skills_for(objects)
        lm = language_scores(args.task, [s for s, _, _ in skills])
        ranked = sorted(((lm[i] * affordance[a] * affordance[b], s, a, b) for i, (s, a, b) in enumerate(skills)),
                        reverse=True)
        for combined, s, a, b in ranked[:5]:
            print(f"  {combined:.4f}  {s}")
        combined, skill, pick, place = ranked[0]
        if combined <= 0.0:
            print("no feasible skill: the objects are not visible", file=sys.stderr)
            return 3
        ground = call(node, node.create_client(Ground, f"{args.node}/ground"),
                      Ground.Request(pick=pick, place=place, threshold=args.threshold, target_frame=args.frame),
                      args.timeout)
        if not ground.success:
            print(f"~/ground failed: {ground.message}", file=sys.stderr)
            return 1
        frame = ground.position_frame_id or "(no frame_id)"
        print(f"plan: {skill}")
        print(f"  pick:  {fmt_target(ground.pick, frame)}")
        print(f"  place: {fmt_target(ground.place, frame)}")
        print(f"  3D points in: {frame} (image frame {ground.header.frame_id or '(none)'}, "
              f"stamp {ground.header.stamp.sec}.{ground.header.stamp.nanosec:09d})")
        if "no 3D" in ground.message:
            print(f"  {ground.message}")
        return 0
    except RuntimeError as e:
        print(str(e), file=sys.stderr)
        return 1
    finally:
        node.destroy_node()
        rclpy.shutdown()


if __name__ == "__main__":
    sys.exit(main())
