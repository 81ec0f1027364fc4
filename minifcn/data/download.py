"""Download and unpack PASCAL VOC and SBD: `python -m minifcn.data.download voc2012 sbd --root data`.

Each archive goes to ROOT/<name>.part first, with a progress bar on stderr; an interrupted download
resumes from where it stopped (an HTTP Range request) the next time the command runs. Only a file
whose checksum matches the published one is renamed to its final name (an atomic rename), and only
then unpacked. Checksums are the MD5s published with the datasets and used by torchvision.

    voc2012  VOCtrainval_11-May-2012.tar  about 1.9 GB  -> ROOT/VOCdevkit/VOC2012
    voc2011  VOCtrainval_25-May-2011.tar  about 1.7 GB  -> ROOT/TrainVal/VOCdevkit/VOC2011 (for seg11valid)
    sbd      benchmark.tgz                about 1.4 GB  -> ROOT/benchmark_RELEASE/dataset
"""
import argparse
import hashlib
import os
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .. import cli

ARCHIVES = {
    "voc2012": {"url": "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                "md5": "6cd6e144f989b92b3379bac3b3de84fd", "contents": "VOCdevkit/VOC2012"},
    "voc2011": {"url": "http://host.robots.ox.ac.uk/pascal/VOC/voc2011/VOCtrainval_25-May-2011.tar",
                "md5": "6c3384ef61512963050cb5d687e5bf1e", "contents": "TrainVal/VOCdevkit/VOC2011"},
    "sbd": {"url": "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
                   "benchmark.tgz",
            "md5": "82b4d87ceb2ed10f6038a1cba92111cb", "contents": "benchmark_RELEASE/dataset"},
}


class ChecksumError(ValueError):
    """A downloaded file does not match its published checksum (bad data, told to the user in one line by cli.run)."""


def _human(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


class Progress:
    """A one-line progress bar on stderr: bytes, percent, rate, time left; redrawn at most 10 times a second."""

    def __init__(self, name, done, total, stream=None, enabled=True):
        self.name, self.done, self.total, self.start_done = name, done, total, done
        self.stream, self.enabled = stream or sys.stderr, enabled
        self.t0 = self.t_last = time.monotonic()

    def update(self, n, final=False):
        self.done += n
        now = time.monotonic()
        if not self.enabled or (now - self.t_last < 0.1 and not final):
            return
        self.t_last = now
        rate = (self.done - self.start_done) / max(now - self.t0, 1e-6)
        if self.total:
            frac = self.done / self.total
            left = (self.total - self.done) / rate if rate > 0 else 0
            bar = "#" * int(30 * frac)
            line = (f"{self.name} [{bar:<30}] {100 * frac:5.1f}% {_human(self.done)} / {_human(self.total)}"
                    f"  {_human(rate)}/s  ETA {int(left) // 60}:{int(left) % 60:02d}")
        else:
            line = f"{self.name} {_human(self.done)}  {_human(rate)}/s"
        self.stream.write("\r" + line + ("\n" if final else ""))
        self.stream.flush()


def file_digest(path, algorithm="md5"):
    """Hex digest of a file, read in 1 MB pieces."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path, md5, sha256):
    """Raise ChecksumError (and delete the file) when it does not match; no expected value -> no check."""
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        got = file_digest(path, algorithm) if expected else None
        if got is not None and got != expected.lower():
            os.remove(path)
            raise ChecksumError(f"{path}: {algorithm} is {got}, expected {expected}; the file was corrupt or "
                                "is not the published archive, so it was deleted. Run the command again to "
                                "download it afresh; from a mirror (--url) whose archive differs from the official "
                                "one, give its own md5 with --md5.")


def download(url, dest, md5=None, sha256=None, progress=True, timeout=60, chunk_size=1 << 16):
    """Fetch `url` to `dest` (a file path), resuming `dest`.part if a previous attempt left one.

    The server's answer to the Range request decides: 206 appends the rest, 200 (no Range support)
    starts over, 416 means the part is already whole. The checksum (md5 and/or sha256, hex) is
    checked before the atomic rename to `dest`; a file already at `dest` is checked and kept.
    Returns dest as a Path.
    """
    dest = Path(dest)
    if dest.exists():
        _verify(dest, md5, sha256)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not have:                          # 416: nothing left to send
            raise RuntimeError(f"downloading {url}: HTTP {e.code} {e.reason}; check the URL or pass --url "
                               "a mirror") from e
        response = None
    except (urllib.error.URLError, OSError) as e:
        raise RuntimeError(f"downloading {url}: cannot connect ({getattr(e, 'reason', e)}); check the "
                           f"network, then run again{' to resume' if have else ''}") from e
    if response is not None:
        with response:
            if response.status == 206:                         # the server sends bytes have.. onwards
                mode, total = "ab", int(response.headers.get("Content-Range", "/0").rsplit("/", 1)[-1] or 0)
            else:                                              # 200: the whole file again
                mode, have = "wb", 0
                total = int(response.headers.get("Content-Length") or 0)
            bar = Progress(dest.name, have, total, enabled=progress)
            with open(part, mode) as f:
                for block in iter(lambda: response.read(chunk_size), b""):
                    f.write(block)
                    bar.update(len(block))
            bar.update(0, final=True)
        got = part.stat().st_size
        if total and got < total:
            raise RuntimeError(f"downloading {url}: the connection ended after {_human(got)} of {_human(total)}; "
                               f"run again to resume from {part}")
    _verify(part, md5, sha256)
    os.replace(part, dest)                                     # atomic: dest is whole or absent
    return dest


def extract(archive, root):
    """Unpack a .tar / .tgz into root, refusing members that would land outside it."""
    root = Path(root)
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):                   # Python >= 3.10.12 / 3.11.4
            tar.extractall(root, filter="data")
            return
        top = root.resolve()
        for member in tar.getmembers():
            target = (root / member.name).resolve()
            if top not in (target, *target.parents) or member.issym() or member.islnk():
                raise RuntimeError(f"{archive}: refusing to extract {member.name!r} (outside {root} or a link)")
        tar.extractall(root)


def fetch(name, root, url=None, md5=None, progress=True, remove_archive=False):
    """Download, check and unpack dataset `name` ('voc2012', 'voc2011' or 'sbd') under root.

    url / md5 replace the official ones (a mirror; the tests' local server). Returns the folder the
    readers open. Nothing is unpacked twice: a marker file records a finished extraction.
    """
    if name not in ARCHIVES:
        raise ValueError(f"unknown download {name!r}; choose from {', '.join(ARCHIVES)}")
    spec, root = ARCHIVES[name], Path(root)
    url = url or spec["url"]
    archive = root / url.rstrip("/").rsplit("/", 1)[-1]
    marker = root / f".{archive.name}.extracted"
    contents = root / spec["contents"]
    if not (marker.exists() and contents.is_dir()):
        download(url, archive, md5=md5 or spec["md5"], progress=progress)
        if progress:
            print(f"unpacking {archive} ...", file=sys.stderr)
        extract(archive, root)
        if not contents.is_dir():
            raise RuntimeError(f"{archive} did not contain {spec['contents']}; is it the right archive?")
        marker.touch()
    if remove_archive and archive.exists():
        archive.unlink()
    return contents


USE = {   # how each download is used, printed when it is ready
    "voc2012": "train or evaluate with --dataset voc --data-root {root}",
    "sbd": "train with --dataset sbd --data-root {root}",
    "voc2011": "with sbd beside it, evaluate on the paper's val split with --dataset seg11valid --data-root {root}",
}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m minifcn.data.download", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="+", choices=sorted(ARCHIVES), help="datasets to fetch")
    p.add_argument("--root", default=None, help="where to put them (default: $MINIFCN_DATA or ./data)")
    p.add_argument("--url", help="download from this URL instead (a mirror); one dataset at a time")
    p.add_argument("--md5", help="the mirror's md5, if its archive differs from the official one")
    p.add_argument("--remove-archive", action="store_true", help="delete each archive once unpacked")
    args = p.parse_args(argv)
    if args.url and len(args.names) > 1:
        p.error("--url names one archive: give one dataset with it")
    from .voc import default_root
    root = Path(args.root) if args.root else default_root()
    for name in args.names:
        where = fetch(name, root, url=args.url, md5=args.md5, remove_archive=args.remove_archive)
        print(f"{name}: ready in {where}  ({USE[name].format(root=root)})")


if __name__ == "__main__":
    raise SystemExit(cli.run(main, "python -m minifcn.data.download"))
