"""python -m minifcn: the command-line jobs, each run as python -m minifcn.<job> (add --help to any of them)."""
import sys
from pathlib import Path

JOBS = [("train", "train an FCN (the bare command: FCN-8s on the built-in shapes, on the CPU)"),
        ("evaluate", "the paper's four metrics of a checkpoint over a dataset split"),
        ("predict", "segment images: a palette PNG and an overlay for each"),
        ("convert", "torchvision / Caffe / Keras VGG16 or FCN weights -> a minifcn .npz"),
        ("data.download", "fetch VOC2011, VOC2012 or SBD, with checksum and resume"),
        ("gradcheck", "every op's backward against numerical derivatives"),
        ("assignments", "instructors: write the student version of the package"),
        ("grade", "instructors: grade a student package")]


def main():
    print(__doc__.strip() + "\n")
    here = Path(__file__).resolve().parent
    for job, what in JOBS:
        if (here / f"{job.replace('.', '/')}.py").is_file():       # the students' copy has no instructors' jobs
            print(f"  python -m minifcn.{job:<14} {what}")
    return 0 if len(sys.argv) == 1 else 2


if __name__ == "__main__":
    from minifcn import cli
    sys.exit(cli.run(main, "python -m minifcn"))                  # `python -m minifcn | head` ends quietly
