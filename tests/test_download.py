"""The download command against a local HTTP server on 127.0.0.1 serving a small fabricated archive."""
import hashlib
import io
import re
import tarfile
import threading
import urllib.error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from minifcn.data import download as dl
from minifcn.data import get_dataset, palette
from minifcn.data.download import ChecksumError, Progress, download, extract, fetch, main


def fabricated_voc_archive():
    """A .tgz holding VOCdevkit/VOC2012 with two images, their palette masks and the split lists."""
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        base = "VOCdevkit/VOC2012/"
        for split, ids in (("train", ["2007_000001"]), ("val", ["2007_000002"])):
            add(base + f"ImageSets/Segmentation/{split}.txt", "".join(f"{i}\n" for i in ids).encode())
            for i in ids:
                jpg, png = io.BytesIO(), io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(jpg, "JPEG")
                mask = Image.fromarray(rng.integers(0, 21, (10, 12)).astype(np.uint8), mode="P")
                mask.putpalette(palette().ravel().tolist())
                mask.save(png, "PNG")
                add(base + f"JPEGImages/{i}.jpg", jpg.getvalue())
                add(base + f"SegmentationClass/{i}.png", png.getvalue())
        add(base + "padding.bin", rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes())  # some bulk
    return buf.getvalue()


ARCHIVE = fabricated_voc_archive()
MD5 = hashlib.md5(ARCHIVE).hexdigest()


class Server:
    """Serves ARCHIVE at /<anything>.tgz; honours 'Range: bytes=N-' unless told not to; records requests."""

    def __init__(self):
        self.ranges, self.honour_range, self.cut_after = [], True, None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):                               # keep the test output quiet
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                start = int(re.match(r"bytes=(\d+)-", rng).group(1)) if rng and outer.honour_range else 0
                if start >= len(ARCHIVE) and rng:
                    self.send_response(416)
                    self.end_headers()
                    return
                body = ARCHIVE[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(ARCHIVE) - 1}/{len(ARCHIVE)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:outer.cut_after] if outer.cut_after else body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/VOCtrainval_test.tgz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def test_download_checks_the_sum_and_extracts(server, tmp_path):
    where = fetch("voc2012", tmp_path, url=server.url, md5=MD5, progress=False)
    assert where == tmp_path / "VOCdevkit" / "VOC2012"
    assert (tmp_path / "VOCtrainval_test.tgz").read_bytes() == ARCHIVE
    assert not (tmp_path / "VOCtrainval_test.tgz.part").exists()
    ds = get_dataset("voc", "val", root=tmp_path)                        # the readers open what came down
    assert len(ds) == 1 and ds[0][0].shape == (10, 12, 3)
    fetch("voc2012", tmp_path, url=server.url, md5=MD5, progress=False)  # done already: no new request
    assert server.ranges == [None]


def test_checksum_mismatch_leaves_no_file(server, tmp_path):
    dest = tmp_path / "archive.tgz"
    with pytest.raises(ChecksumError, match=r"archive\.tgz\.part: md5 is [0-9a-f]{32}, expected 0{32}"):
        download(server.url, dest, md5="0" * 32, progress=False)
    assert not dest.exists() and not (tmp_path / "archive.tgz.part").exists()


def test_resume_asks_for_the_rest_only(server, tmp_path):
    dest = tmp_path / "archive.tgz"
    half = len(ARCHIVE) // 2
    (tmp_path / "archive.tgz.part").write_bytes(ARCHIVE[:half])
    download(server.url, dest, sha256=hashlib.sha256(ARCHIVE).hexdigest(), progress=False)
    assert server.ranges == [f"bytes={half}-"] and dest.read_bytes() == ARCHIVE


def test_interrupted_download_resumes_on_the_next_run(server, tmp_path):
    dest = tmp_path / "archive.tgz"
    server.cut_after = 100_000                                            # the connection drops mid-way
    with pytest.raises(RuntimeError, match="run again to resume"):
        download(server.url, dest, md5=MD5, progress=False, timeout=10)
    assert (tmp_path / "archive.tgz.part").stat().st_size == 100_000 and not dest.exists()
    server.cut_after = None
    download(server.url, dest, md5=MD5, progress=False)
    assert server.ranges == [None, "bytes=100000-"] and dest.read_bytes() == ARCHIVE


def test_server_without_range_support_starts_over(server, tmp_path):
    server.honour_range = False
    (tmp_path / "archive.tgz.part").write_bytes(b"stale bytes from another file")
    download(server.url, tmp_path / "archive.tgz", md5=MD5, progress=False)
    assert (tmp_path / "archive.tgz").read_bytes() == ARCHIVE


def test_complete_part_file_gets_416_and_is_kept(server, tmp_path):
    (tmp_path / "archive.tgz.part").write_bytes(ARCHIVE)
    download(server.url, tmp_path / "archive.tgz", md5=MD5, progress=False)
    assert (tmp_path / "archive.tgz").read_bytes() == ARCHIVE


def test_unreachable_server_says_so(tmp_path):
    s = Server()
    url = s.url
    s.close()                                                            # nothing listens there now
    with pytest.raises(RuntimeError, match="cannot connect"):
        download(url, tmp_path / "x.tgz", progress=False, timeout=5)


def test_extract_refuses_paths_outside_the_root(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    (tmp_path / "evil.tar").write_bytes(buf.getvalue())
    (tmp_path / "out").mkdir()
    with pytest.raises(Exception):
        extract(tmp_path / "evil.tar", tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


def test_progress_bar_shows_bytes_percent_and_rate():
    stream = io.StringIO()
    bar = Progress("x.tar", 0, 2 * 1024 * 1024, stream=stream)
    bar.update(1024 * 1024, final=True)
    line = stream.getvalue()
    assert "50.0%" in line and "1.0 MB / 2.0 MB" in line and "/s" in line and "ETA" in line


def test_command_line(server, tmp_path, capsys):
    main(["voc2012", "--root", str(tmp_path), "--url", server.url, "--md5", MD5])
    out, err = capsys.readouterr()
    assert "ready in" in out and "100.0%" in err
    assert (tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2007_000001.jpg").is_file()


def test_an_http_error_on_resume_keeps_the_partial_file(tmp_path, monkeypatch):
    """Only 416 means 'already whole': a 503 while resuming is an error that leaves the .part for the next
    run (not a checksum failure that deletes it)."""
    part = tmp_path / "archive.tgz.part"
    part.write_bytes(ARCHIVE[:1000])

    def unavailable(request, timeout):
        raise urllib.error.HTTPError(request.full_url, 503, "Service Unavailable", {}, None)
    monkeypatch.setattr(urllib.request, "urlopen", unavailable)
    with pytest.raises(RuntimeError, match="HTTP 503"):
        download("http://127.0.0.1:9/archive.tgz", tmp_path / "archive.tgz", md5=MD5, progress=False)
    assert part.read_bytes() == ARCHIVE[:1000]


def test_the_checksum_is_compared_whatever_its_case(server, tmp_path):  # noqa: F811
    download(server.url, tmp_path / "archive.tgz", md5=MD5.upper(), progress=False)
    assert (tmp_path / "archive.tgz").read_bytes() == ARCHIVE


def test_a_file_already_at_dest_is_checked(server, tmp_path):  # noqa: F811
    dest = tmp_path / "archive.tgz"
    dest.write_bytes(ARCHIVE)
    download(server.url, dest, md5=MD5, progress=False)                   # right: kept, nothing fetched
    assert server.ranges == [] and dest.read_bytes() == ARCHIVE
    dest.write_bytes(b"another file under the archive's name")
    with pytest.raises(ChecksumError, match=r"archive\.tgz: md5"):
        download(server.url, dest, md5=MD5, progress=False)
    assert not dest.exists()


def test_unpacked_once_and_again_only_when_the_folder_is_gone(server, tmp_path, monkeypatch):  # noqa: F811
    where = fetch("voc2012", tmp_path, url=server.url, md5=MD5, progress=False)
    extract = dl.extract
    monkeypatch.setattr(dl, "extract", lambda *a: pytest.fail("unpacked twice"))
    assert fetch("voc2012", tmp_path, url=server.url, md5=MD5, progress=False) == where
    monkeypatch.setattr(dl, "extract", extract)
    (where / "ImageSets" / "Segmentation" / "val.txt").unlink()
    for p in sorted(where.rglob("*"), reverse=True):                         # the user deleted the dataset
        p.rmdir() if p.is_dir() else p.unlink()
    where.rmdir()
    assert fetch("voc2012", tmp_path, url=server.url, md5=MD5, progress=False) == where
    assert (where / "ImageSets" / "Segmentation" / "val.txt").is_file() and server.ranges == [None]


def test_a_checksum_mismatch_is_one_line_that_names_the_md5_option(server, tmp_path, capsys, monkeypatch):
    """ChecksumError is bad data, for the user: one 'error:' line (status 2), not a traceback."""
    from minifcn import cli
    monkeypatch.delenv("MINIFCN_TRACEBACK", raising=False)
    argv = ["voc2012", "--root", str(tmp_path), "--url", server.url, "--md5", "0" * 32]
    assert cli.run(lambda: main(argv), "python -m minifcn.data.download") == 2
    err = capsys.readouterr().err
    assert "error: " in err and "md5 is" in err and "give its own md5 with --md5" in err and "Traceback" not in err
