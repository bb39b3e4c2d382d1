"""Tests of asdflow.download against a local HTTP server serving tiny DCASE-layout zips."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import stat
import threading
import time
import warnings
import wave
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from asdflow import download as dl
from asdflow.cli import main
from asdflow.errors import DownloadError

# Small counts for the test zips (the real ones are 1000 train and 200 test per machine).
COUNTS = {"dev": {"train": 4, "test": 3}, "add": {"train": 5}, "eval": {"test": 2}}
PAYLOAD = bytes(range(256)) * 2  # recognisable sample bytes, findable in a stored zip


def wav_bytes() -> bytes:
    """A 256-sample 16-bit mono 16 kHz wav file."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(PAYLOAD)
    return buffer.getvalue()


def clip_names(dataset: str, split: str, n: int) -> list[str]:
    if dataset == "eval":
        return [f"section_00_{i + 1:04d}.wav" for i in range(n)]
    return [f"section_00_source_{split}_normal_{i:04d}_noAttribute.wav" for i in range(n)]


def make_zip(
    path: Path,
    dataset: str,
    machine: str,
    *,
    counts: dict[str, int] | None = None,
    prefix: str | None = None,
    extra: dict[str, bytes] | None = None,
) -> Path:
    """A machine zip in the DCASE layout: ``<prefix>/<split>/*.wav`` + attributes_00.csv."""
    counts = COUNTS[dataset] if counts is None else counts
    prefix = machine if prefix is None else prefix
    lead = f"{prefix}/" if prefix else ""
    audio = wav_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for split, n in counts.items():
            for name in clip_names(dataset, split, n):
                archive.writestr(f"{lead}{split}/{name}", audio)
        archive.writestr(f"{lead}attributes_00.csv", f"file_name,d1p,d1v\n# {dataset}\n")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return path


class Server(SimpleNamespace):
    def publish(self, dataset: str, machine: str, **kwargs) -> Path:
        """Build a zip and place it where its URL points."""
        target = self.root / dl.RECORDS[dataset] / "files" / dl.zip_name(dataset, machine)
        return make_zip(target, dataset, machine, **kwargs)

    def zip_requests(self) -> list[str]:
        """The requests for files, without those for the records' metadata."""
        return [path for path in self.requests if not path.startswith("/api/")]

    def record(self, record: str) -> dict:
        """Metadata of a record as Zenodo's API gives it: name, size and MD5 of each served file.

        ``self.changes`` (file name to fields) replaces fields of an entry.
        """
        folder = self.root / record / "files"
        files = sorted(folder.iterdir()) if folder.is_dir() else []
        entries = [
            {
                "key": path.name,
                "size": path.stat().st_size,
                "checksum": "md5:" + hashlib.md5(path.read_bytes()).hexdigest(),
                "links": {"self": f"{self.url}/api/records/{record}/files/{path.name}/content"},
                **self.changes.get(path.name, {}),
            }
            for path in files
        ]
        return {"id": int(record), "files": entries}


@pytest.fixture
def server(tmp_path):
    """A local HTTP server over ``tmp_path/zenodo`` and its records' metadata, counting requests.

    ``server.api = False`` makes the metadata URLs answer 404, as on a mirror without the API.
    """
    root = tmp_path / "zenodo"
    root.mkdir()
    state = Server(root=root, requests=[], agents=[], api=True, changes={})

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            state.requests.append(self.path)
            state.agents.append(self.headers.get("User-Agent", ""))
            if self.path.startswith("/cut/"):  # promises 100 kB, sends 100 B
                self.send_response(200)
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.wfile.write(b"x" * 100)
                return
            api = re.fullmatch(r"/api/records/(\d+)", self.path)
            if api and state.api:
                body = json.dumps(state.record(api.group(1))).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if api:
                self.send_error(404)
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_port}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def _no_wait(monkeypatch):
    monkeypatch.setattr(dl, "RETRY_WAIT_S", 0.0)
    monkeypatch.delenv(dl.URL_ENV, raising=False)


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


# ------------------------------------------------------------------ URL table


@pytest.mark.parametrize("machine", ["bearing", "fan", "gearbox", "slider", "ToyCar", "ToyTrain", "valve"])  # fmt: skip
def test_dev_urls_follow_design(machine):
    assert dl.zip_url("dev", machine) == (
        f"https://zenodo.org/records/10902294/files/dev_{machine}.zip"
    )


EVAL_NAMES = ["3DPrinter", "AirCompressor", "Scanner", "ToyCircuit", "HoveringDrone",
              "HairDryer", "ToothBrush", "RoboticArm", "BrushlessMotor"]  # fmt: skip


@pytest.mark.parametrize("machine", EVAL_NAMES)
def test_add_and_eval_urls_follow_design(machine):
    revision = "_r2" if machine in ("3DPrinter", "RoboticArm") else ""
    assert dl.zip_url("add", machine) == (
        f"https://zenodo.org/records/11259435/files/eval_data_{machine}_train{revision}.zip"
    )
    assert dl.zip_url("eval", machine) == (
        f"https://zenodo.org/records/11363076/files/eval_data_{machine}_test.zip"
    )


def test_machine_tables_and_folders():
    assert set(dl.MACHINES["add"]) == set(EVAL_NAMES) == set(dl.MACHINES["eval"])
    assert len(dl.MACHINES["dev"]) == 7 and not set(dl.MACHINES["dev"]) & set(EVAL_NAMES)
    assert dl.machine_dir("/d", "dev", "fan") == Path("/d/dev_data/raw/fan")
    assert dl.machine_dir("/d", "add", "Scanner") == Path("/d/eval_data/raw/Scanner")
    assert dl.machine_dir("/d", "eval", "Scanner") == Path("/d/eval_data/raw/Scanner")


def test_base_url_from_argument_and_environment(monkeypatch):
    assert (
        dl.zip_url("dev", "fan", "http://mirror/x/") == "http://mirror/x/10902294/files/dev_fan.zip"
    )
    monkeypatch.setenv(dl.URL_ENV, "http://env-mirror")
    assert dl.zip_url("eval", "Scanner") == (
        "http://env-mirror/11363076/files/eval_data_Scanner_test.zip"
    )
    assert dl.zip_url("dev", "fan", "http://arg") == "http://arg/10902294/files/dev_fan.zip"


@pytest.mark.parametrize(
    ("dataset", "machine", "hints"),
    [
        ("dev", "3DPrinter", ["belongs to set(s) add, eval", "bearing", "valve"]),
        ("dev", "toycar", ["Did you mean 'ToyCar'?", "ToyTrain"]),
        ("add", "fan", ["belongs to set(s) dev", "3DPrinter", "BrushlessMotor"]),
        ("eval", "blender", ["HairDryer", "ToothBrush"]),
    ],
)
def test_unknown_machine_lists_valid_ones(tmp_path, dataset, machine, hints):
    with pytest.raises(DownloadError, match=repr(machine)) as info:
        dl.download(tmp_path, dataset=dataset, machines=[machine], progress=False)
    for hint in hints:
        assert hint in str(info.value)
    assert list(tmp_path.iterdir()) == []  # refused before anything is written


def test_unknown_set(tmp_path):
    with pytest.raises(DownloadError, match="dev, add, eval"):
        dl.download(tmp_path, dataset="train", progress=False)


# ------------------------------------------------------------------ download and unpack


def test_download_unpacks_into_layout(tmp_path, server):
    for machine in ("fan", "ToyCar"):
        server.publish("dev", machine)
    dest = tmp_path / "data"
    folders = dl.download(
        dest, dataset="dev", machines=["fan", "ToyCar"], base_url=server.url,
        progress=False, expected_counts=COUNTS["dev"],
    )  # fmt: skip
    assert folders == [dest / "dev_data/raw/fan", dest / "dev_data/raw/ToyCar"]
    for folder in folders:
        assert sorted(p.name for p in (folder / "train").iterdir()) == clip_names("dev", "train", 4)
        assert sorted(p.name for p in (folder / "test").iterdir()) == clip_names("dev", "test", 3)
        assert (folder / "train" / clip_names("dev", "train", 1)[0]).read_bytes() == wav_bytes()
        assert (folder / "attributes_00.csv").is_file()
        marker = json.loads((folder / ".asdflow-dev.json").read_text())
        assert marker["counts"] == {"train": 4, "test": 3}
        assert marker["url"] == dl.zip_url("dev", folder.name, server.url)
        published = server.root / "10902294/files" / f"dev_{folder.name}.zip"
        assert marker["md5"] == hashlib.md5(published.read_bytes()).hexdigest()
    # the zips are deleted and no temporary file or folder is left
    assert list((dest / "dev_data/zips").iterdir()) == []
    assert sorted(p.name for p in (dest / "dev_data/raw").iterdir()) == ["ToyCar", "fan"]
    assert all(agent.startswith("asdflow") for agent in server.agents)
    # the record's metadata is read once for both zips
    assert sorted(server.requests) == [
        "/10902294/files/dev_ToyCar.zip",
        "/10902294/files/dev_fan.zip",
        "/api/records/10902294",
    ]


def test_second_run_skips_without_network(tmp_path, server):
    server.publish("dev", "fan")
    kwargs = dict(dataset="dev", machines=["fan"], base_url=server.url, progress=False,
                  expected_counts=COUNTS["dev"])  # fmt: skip
    first = dl.download(tmp_path, **kwargs)
    stamps = {p: p.stat().st_mtime_ns for p in first[0].rglob("*")}
    n_requests = len(server.requests)
    start = time.perf_counter()
    second = dl.download(tmp_path, **kwargs)
    elapsed = time.perf_counter() - start
    assert second == first
    assert len(server.requests) == n_requests == 2  # metadata and zip, in the first run only
    assert elapsed < 1.0
    assert {p: p.stat().st_mtime_ns for p in first[0].rglob("*")} == stamps


def test_missing_clip_triggers_a_fresh_download(tmp_path, server):
    server.publish("dev", "fan")
    kwargs = dict(dataset="dev", machines=["fan"], base_url=server.url, progress=False,
                  expected_counts=COUNTS["dev"])  # fmt: skip
    (folder,) = dl.download(tmp_path, **kwargs)
    victim = folder / "test" / clip_names("dev", "test", 1)[0]
    victim.unlink()
    (folder / "test" / "notes.txt").write_text("not from the zip")
    dl.download(tmp_path, **kwargs)
    assert len(server.zip_requests()) == 2
    assert victim.read_bytes() == wav_bytes()
    # the zip's files are back, the user's file is left alone
    assert sorted(p.name for p in (folder / "test").iterdir()) == [
        "notes.txt",
        *clip_names("dev", "test", 3),
    ]
    assert (folder / "test" / "notes.txt").read_text() == "not from the zip"


def test_keep_zip_is_reused_offline(tmp_path, server):
    server.publish("dev", "valve")
    kwargs = dict(dataset="dev", machines=["valve"], base_url=server.url, progress=False,
                  expected_counts=COUNTS["dev"], keep_zip=True)  # fmt: skip
    (folder,) = dl.download(tmp_path, **kwargs)
    kept = tmp_path / "dev_data/zips/dev_valve.zip"
    assert kept.is_file() and list(kept.parent.iterdir()) == [kept]
    for path in sorted(folder.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    folder.rmdir()
    dl.download(tmp_path, **kwargs)
    assert len(server.zip_requests()) == 1  # rebuilt from the kept zip
    assert len(list((folder / "train").glob("*.wav"))) == 4


def test_add_and_eval_share_the_machine_folder(tmp_path, server):
    server.publish("add", "3DPrinter")
    server.publish("eval", "3DPrinter")
    common = dict(machines="3DPrinter", base_url=server.url, progress=False)
    dl.download(tmp_path, dataset="add", expected_counts=COUNTS["add"], **common)
    (folder,) = dl.download(tmp_path, dataset="eval", expected_counts=COUNTS["eval"], **common)
    assert folder == tmp_path / "eval_data/raw/3DPrinter"
    assert server.zip_requests() == [
        "/11259435/files/eval_data_3DPrinter_train_r2.zip",
        "/11363076/files/eval_data_3DPrinter_test.zip",
    ]
    assert len(list((folder / "train").glob("*.wav"))) == 5
    assert sorted(p.name for p in (folder / "test").iterdir()) == clip_names("eval", "test", 2)
    assert (folder / ".asdflow-add.json").is_file() and (folder / ".asdflow-eval.json").is_file()
    # unpacking the test zip did not invalidate the training set
    dl.download(tmp_path, dataset="add", expected_counts=COUNTS["add"], **common)
    assert len(server.requests) == 4  # two zips and the metadata of their two records


@pytest.mark.parametrize("prefix", ["", "dev_data/raw/gearbox"])
def test_other_top_level_folders_land_in_the_same_layout(tmp_path, server, prefix):
    server.publish("dev", "gearbox", prefix=prefix, extra={"__MACOSX/._x": b"junk"})
    (folder,) = dl.download(tmp_path, machines=["gearbox"], base_url=server.url,
                            progress=False, expected_counts=COUNTS["dev"])  # fmt: skip
    assert folder == tmp_path / "dev_data/raw/gearbox"
    assert files_under(folder) == (
        {"train", "test", "attributes_00.csv", ".asdflow-dev.json"}
        | {f"train/{n}" for n in clip_names("dev", "train", 4)}
        | {f"test/{n}" for n in clip_names("dev", "test", 3)}
    )
    assert not (tmp_path / "__MACOSX").exists() and not (folder / "__MACOSX").exists()


# ------------------------------------------------------------------ rejected downloads


def assert_nothing_left(dest: Path, dataset: str, machine: str) -> None:
    """No machine folder, no marker, no zip, no temporary file after a failure."""
    assert not dl.machine_dir(dest, dataset, machine).exists()
    zips = dest / dl.DATA_FOLDERS[dataset] / "zips"
    assert not zips.exists() or list(zips.iterdir()) == []


def corrupt_truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])


def corrupt_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    at = data.index(PAYLOAD) + 100
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [(corrupt_truncate, "not a readable zip"), (corrupt_flip, "CRC")],
)
def test_corrupt_zip_is_rejected(tmp_path, server, damage, message):
    damage(server.publish("dev", "slider"))
    with pytest.raises(DownloadError, match=message) as info:
        dl.download(tmp_path, machines=["slider"], base_url=server.url, progress=False,
                    expected_counts=COUNTS["dev"])  # fmt: skip
    assert "dev_slider.zip" in str(info.value)
    assert_nothing_left(tmp_path, "dev", "slider")


def test_interrupted_transfer_is_retried_then_reported(tmp_path, server):
    url = f"{server.url}/cut/files"
    part = tmp_path / "x.zip.part"
    with pytest.raises(DownloadError, match="after 3 attempt") as info:
        dl.fetch(url, part, progress=False, retries=2)
    assert url in str(info.value)
    assert len(server.requests) == 3
    assert not part.exists()


@pytest.mark.parametrize(
    ("counts", "found", "wanted"),
    [({"train": 3, "test": 3}, 3, 4), ({"train": 4, "test": 0}, 0, 3)],
)
def test_wrong_file_count_is_rejected(tmp_path, server, counts, found, wanted):
    server.publish("dev", "bearing", counts=counts)
    with pytest.raises(DownloadError, match=f"{found} .wav files in bearing/.* expected {wanted}"):
        dl.download(tmp_path, machines=["bearing"], base_url=server.url, progress=False,
                    expected_counts=COUNTS["dev"])  # fmt: skip
    assert_nothing_left(tmp_path, "dev", "bearing")


def test_default_counts_reject_a_small_zip(tmp_path, server):
    server.publish("dev", "fan")
    with pytest.raises(DownloadError, match="4 .wav files in fan/train, expected 1000"):
        dl.download(tmp_path, machines=["fan"], base_url=server.url, progress=False)


def test_zip_of_another_machine_is_rejected(tmp_path, server):
    target = server.root / "10902294/files/dev_fan.zip"
    make_zip(target, "dev", "valve")
    with pytest.raises(DownloadError, match="'valve', not 'fan'"):
        dl.download(tmp_path, machines=["fan"], base_url=server.url, progress=False,
                    expected_counts=COUNTS["dev"])  # fmt: skip
    assert_nothing_left(tmp_path, "dev", "fan")


def symlink_entry(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def add_members(zip_path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> None:
    with zipfile.ZipFile(zip_path, "a") as archive:
        for name, data in members:
            archive.writestr(name, data)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "backslash"])
def test_malicious_zip_is_refused(tmp_path, server, kind):
    dest = tmp_path / "data"
    outside = tmp_path / "evil.txt"
    name = {
        "dotdot": "../../../evil.txt",
        "absolute": str(outside),
        "symlink": "ToyTrain/train/link.wav",
        "backslash": "ToyTrain\\..\\..\\..\\evil.txt",
    }[kind]
    member = symlink_entry(name, str(outside)) if kind == "symlink" else name
    zip_path = server.publish("dev", "ToyTrain")
    add_members(zip_path, [(member, b"pwned")])
    with pytest.raises(DownloadError) as info:
        dl.download(dest, machines=["ToyTrain"], base_url=server.url, progress=False,
                    expected_counts=COUNTS["dev"])  # fmt: skip
    text = str(info.value)
    assert "dev_ToyTrain.zip" in text and repr(name) in text
    assert not outside.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "zenodo"]
    assert_nothing_left(dest, "dev", "ToyTrain")


@pytest.mark.parametrize("bad", ["../evil.txt", "/abs/evil.txt", "C:\\evil.txt"])
def test_safe_extract_extracts_nothing_from_an_unsafe_zip(tmp_path, bad):
    zip_path = tmp_path / "mixed.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("fan/train/a.wav", b"ok")
        archive.writestr(bad, b"bad")
        archive.writestr("fan/train/b.wav", b"ok")
    out = tmp_path / "out"
    with pytest.raises(
        DownloadError, match=re.escape(f"member {bad!r}") + ".*nothing was extracted"
    ):
        dl.safe_extract(zip_path, out)
    assert not out.exists()
    assert not (tmp_path / "evil.txt").exists()


def test_safe_extract_refuses_a_symlinked_folder_leading_outside(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "fan").symlink_to(elsewhere)
    zip_path = tmp_path / "z.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("fan/train/a.wav", b"ok")
    with pytest.raises(DownloadError, match="outside"):
        dl.safe_extract(zip_path, out)
    assert list(elsewhere.iterdir()) == []


def test_safe_extract_returns_the_extracted_files(tmp_path):
    zip_path = make_zip(tmp_path / "z.zip", "dev", "fan", counts={"train": 2})
    paths = dl.safe_extract(zip_path, tmp_path / "out")
    assert {p.relative_to(tmp_path / "out").as_posix() for p in paths} == {
        "fan/attributes_00.csv",
        *(f"fan/train/{n}" for n in clip_names("dev", "train", 2)),
    }
    assert all(p.read_bytes() == wav_bytes() for p in paths if p.suffix == ".wav")


@pytest.mark.parametrize(
    ("prefix", "expected_prefix"), [("fan", "fan"), ("", ""), ("a/b/fan", "a/b/fan")]
)
def test_verify_zip_reports_prefix_and_counts(tmp_path, prefix, expected_prefix):
    zip_path = make_zip(tmp_path / "z.zip", "dev", "fan", counts={"train": 2, "test": 1},
                        prefix=prefix)  # fmt: skip
    contents = dl.verify_zip(zip_path, machine="fan", expected={"train": 2, "test": None})
    assert contents == dl.ZipContents(prefix=expected_prefix, counts={"train": 2, "test": 1})


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"fan/train/a.wav": b"", "fan/extra/b.wav": b""}, "folder\\(s\\) extra"),
        ({"fan/train/a.wav": b"", "other/fan/train/b.wav": b""}, "several folders"),
        ({"fan/notes.txt": b""}, "no .wav file"),
        ({"fan/train/a.wav": b""}, "0 .wav files in fan/test, expected at least 1"),
    ],
)
def test_verify_zip_rejects_bad_layouts(tmp_path, layout, message):
    zip_path = tmp_path / "z.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for name, data in layout.items():
            archive.writestr(name, data)
    with pytest.raises(DownloadError, match=message):
        dl.verify_zip(zip_path, machine="fan", expected={"train": None, "test": None})


# ------------------------------------------------------------------ published size and MD5


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_record_url_follows_the_zenodo_layout(monkeypatch):
    assert dl.record_url("dev") == "https://zenodo.org/api/records/10902294"
    assert dl.record_url("add", "https://zenodo.org/records/") == (
        "https://zenodo.org/api/records/11259435"
    )
    assert dl.record_url("eval", "http://mirror/x") == "http://mirror/x/api/records/11363076"
    monkeypatch.setenv(dl.URL_ENV, "http://env-mirror/records")
    assert dl.record_url("dev") == "http://env-mirror/api/records/10902294"


def test_record_files_reads_sizes_and_md5s(server):
    zip_path = server.publish("eval", "Scanner")
    files = dl.record_files("eval", server.url)
    assert files == {
        zip_path.name: dl.RecordFile(zip_path.name, zip_path.stat().st_size, md5_of(zip_path))
    }
    assert dl.file_md5(zip_path) == md5_of(zip_path)


def test_record_metadata_in_the_other_zenodo_form():
    """Zenodo's API has also named the fields filename and filesize, with a bare MD5."""
    digest = "0123456789ABCDEF0123456789abcdef"
    files = dl._parse_record(
        {
            "files": [
                {"filename": "a.zip", "filesize": 12, "checksum": digest},
                {"key": "b.zip", "size": 3, "checksum": "sha256:" + "0" * 64},
            ]
        }
    )
    assert files == {
        "a.zip": dl.RecordFile("a.zip", 12, digest.lower()),
        "b.zip": dl.RecordFile("b.zip", 3, None),
    }
    with pytest.raises(ValueError, match="no list of files"):
        dl._parse_record({"hits": []})


def test_published_md5_is_checked_without_warning(tmp_path, server):
    zip_path = server.publish("eval", "Scanner")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (folder,) = dl.download(tmp_path, dataset="eval", machines="Scanner", base_url=server.url,
                                progress=False, expected_counts=COUNTS["eval"])  # fmt: skip
    assert json.loads((folder / ".asdflow-eval.json").read_text())["md5"] == md5_of(zip_path)
    assert server.requests[0] == "/api/records/11363076"


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("checksum", "has MD5 {actual}, but Zenodo publishes MD5 {wrong} for dev_fan.zip"),
        ("size", "is {size} bytes, but Zenodo publishes {wrong} bytes for dev_fan.zip"),
    ],
)
def test_a_zip_differing_from_the_published_one_is_deleted(tmp_path, server, field, message):
    zip_path = server.publish("dev", "fan")
    size, actual = zip_path.stat().st_size, md5_of(zip_path)
    wrong = {"checksum": "f" * 32, "size": size + 1}[field]
    server.changes["dev_fan.zip"] = {field: f"md5:{wrong}" if field == "checksum" else wrong}
    with pytest.raises(DownloadError) as info:
        dl.download(tmp_path, machines=["fan"], base_url=server.url, progress=False,
                    expected_counts=COUNTS["dev"])  # fmt: skip
    text = str(info.value)
    assert message.format(actual=actual, wrong=wrong, size=size) in text
    assert "the file was deleted, run again to download it anew" in text
    assert_nothing_left(tmp_path, "dev", "fan")


def test_without_metadata_a_warning_and_the_content_checks(tmp_path, server):
    server.api = False
    for machine in ("fan", "valve"):
        server.publish("dev", machine)
    corrupt_flip(server.publish("dev", "slider"))
    kwargs = dict(base_url=server.url, progress=False, expected_counts=COUNTS["dev"])
    with pytest.warns(UserWarning) as caught:
        folders = dl.download(tmp_path, machines=["fan", "valve"], **kwargs)
    assert [str(w.message) for w in caught] == [
        f"could not read {server.url}/api/records/10902294 (HTTP 404); the sizes and MD5s "
        "that Zenodo publishes are not checked, the zips are checked by their content only."
    ]
    assert [len(list((f / "train").glob("*.wav"))) for f in folders] == [4, 4]
    assert json.loads((folders[0] / ".asdflow-dev.json").read_text())["md5"] is None
    with pytest.warns(UserWarning, match="HTTP 404"), pytest.raises(DownloadError, match="CRC"):
        dl.download(tmp_path, machines=["slider"], **kwargs)
    assert_nothing_left(tmp_path, "dev", "slider")


def test_a_kept_zip_with_a_changed_byte_is_downloaded_anew(tmp_path, server, capsys):
    zip_path = server.publish("dev", "gearbox")
    with zipfile.ZipFile(zip_path, "a") as archive:
        archive.comment = b"published zip"
    kwargs = dict(dataset="dev", machines=["gearbox"], base_url=server.url,
                  expected_counts=COUNTS["dev"], keep_zip=True)  # fmt: skip
    (folder,) = dl.download(tmp_path, progress=False, **kwargs)
    kept = tmp_path / "dev_data/zips/dev_gearbox.zip"
    # a byte of the zip's comment: every member still passes its CRC, only the MD5 differs
    kept.write_bytes(kept.read_bytes().replace(b"published zip", b"Published zip"))
    dl.verify_zip(kept, machine="gearbox", expected=COUNTS["dev"])
    changed = md5_of(kept)
    shutil.rmtree(folder)
    capsys.readouterr()
    dl.download(tmp_path, progress=True, **kwargs)
    err = capsys.readouterr().err
    assert f"has MD5 {changed}, but Zenodo publishes MD5 {md5_of(zip_path)}" in err
    assert "Downloading it again" in err
    assert len(server.zip_requests()) == 2
    assert md5_of(kept) == md5_of(zip_path)
    assert len(list((folder / "train").glob("*.wav"))) == 4


# ------------------------------------------------------------------ network failures


def test_missing_file_names_the_url(tmp_path, server):
    with (
        pytest.warns(UserWarning, match="record 10902294 lists no file dev_fan.zip"),
        pytest.raises(DownloadError, match="HTTP 404") as info,
    ):
        dl.download(tmp_path, machines=["fan"], base_url=server.url, progress=False)
    text = str(info.value)
    assert dl.zip_url("dev", "fan", server.url) in text
    assert "by hand" in text and "zenodo.org/records/10902294" in text
    assert len(server.zip_requests()) == 1  # a 404 is not retried
    assert_nothing_left(tmp_path, "dev", "fan")


def test_unreachable_server_names_the_url(tmp_path):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)
    url = f"http://127.0.0.1:{httpd.server_port}"
    httpd.server_close()  # nothing listens on that port any more
    with (
        pytest.warns(UserWarning, match=r"api/records/10902294 \(ConnectionError\)"),
        pytest.raises(DownloadError, match="ConnectionError") as info,
    ):
        dl.download(tmp_path, machines=["fan"], base_url=url, progress=False, retries=1)
    text = str(info.value)
    assert f"{url}/10902294/files/dev_fan.zip" in text and "after 2 attempt(s)" in text
    assert "unzip it inside <DEST>/dev_data/raw/" in text
    assert_nothing_left(tmp_path, "dev", "fan")


# ------------------------------------------------------------------ command line


def test_cli_download(tmp_path, server, monkeypatch, capsys):
    server.publish("eval", "Scanner")
    monkeypatch.setenv(dl.URL_ENV, server.url)
    monkeypatch.setitem(dl.EXPECTED_COUNTS, "eval", COUNTS["eval"])
    assert main(["download", str(tmp_path), "--set", "eval", "--machine", "Scanner"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [str(tmp_path / "eval_data/raw/Scanner")]
    assert len(list((tmp_path / "eval_data/raw/Scanner/test").glob("*.wav"))) == 2

    assert main(["download", str(tmp_path), "--set", "eval", "--machine", "fan"]) == 2
    err = capsys.readouterr().err
    assert "unknown machine type 'fan'" in err and "BrushlessMotor" in err


def test_cli_keep_zip(tmp_path, server, monkeypatch, capsys):
    server.publish("dev", "fan")
    monkeypatch.setenv(dl.URL_ENV, server.url)
    monkeypatch.setitem(dl.EXPECTED_COUNTS, "dev", COUNTS["dev"])
    assert main(["download", str(tmp_path), "--machine", "fan", "--keep-zip"]) == 0
    assert (tmp_path / "dev_data/zips/dev_fan.zip").is_file()
