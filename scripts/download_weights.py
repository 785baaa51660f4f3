"""Download the Z-Image-Turbo weights into the weights folder, resumably, from Hugging Face or a mirror.

Two layouts, both loadable by model.Engine:
  comfy (default): the three ComfyUI files from Comfy-Org/z_image_turbo (bf16 transformer 12.3 GB,
                   Qwen3-4B text encoder 8 GB, Flux VAE 335 MB) plus tokenizer/ from Tongyi-MAI/Z-Image-Turbo.
  hf:              the Hugging Face (diffusers) snapshot of Tongyi-MAI/Z-Image-Turbo (fp32 transformer, ~33 GB).

Each file is fetched into `<name>.part` with HTTP Range requests, so an interrupted run continues where it
stopped when started again; a file is only moved into place once its size equals the size the hub reports.

Examples:
  python scripts/download_weights.py                              # comfy layout into ./weights
  python scripts/download_weights.py --layout hf --dir /data/zimage
  python scripts/download_weights.py --mirror https://hf-mirror.com   # mainland China (same as HF_ENDPOINT=...)

Exit codes: 0 done (or already present), 2 bad usage / not enough disk, 3 hub unreachable (offline),
4 download interrupted (run again to resume), 1 any other hub error (message says what to do).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import HfApi, get_hf_file_metadata, get_session, hf_hub_url
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.utils import build_hf_headers
from tqdm import tqdm

logger = logging.getLogger("download_weights")

REPO_ROOT = Path(__file__).resolve().parents[1]
HF_REPO = "Tongyi-MAI/Z-Image-Turbo"
COMFY_REPO = "Comfy-Org/z_image_turbo"
COMFY_FILES = {  # path in COMFY_REPO -> name in the weights folder
    "split_files/diffusion_models/z_image_turbo_bf16.safetensors": "z_image_turbo_bf16.safetensors",
    "split_files/text_encoders/qwen_3_4b.safetensors": "qwen_3_4b.safetensors",
    "split_files/vae/ae.safetensors": "ae.safetensors",
}
HF_FOLDERS = ("scheduler/", "text_encoder/", "tokenizer/", "transformer/", "vae/")
DEFAULT_ENDPOINT = "https://huggingface.co"

EXIT_USAGE, EXIT_OFFLINE, EXIT_INTERRUPTED, EXIT_HUB = 2, 3, 4, 1


class DownloadError(Exception):
    """A download problem with a message that says what to do; `exit_code` tells the setup script why."""

    def __init__(self, message: str, exit_code: int = EXIT_HUB):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: where it lives on the hub and where it goes locally."""

    repo_id: str
    path_in_repo: str
    local_name: str


@dataclass(frozen=True)
class ResolvedFile:
    """A RemoteFile with what the hub says about it (download URL and exact size)."""

    remote: RemoteFile
    url: str
    size: int


def weights_present(folder: Path, layout: str) -> bool:
    """True when `folder` already holds a complete-looking layout (names only; the loader checks contents)."""
    if any(folder.rglob("*.part")):
        return False  # an interrupted download: run the downloader to finish it
    if layout == "comfy":
        names = list(COMFY_FILES.values()) + ["tokenizer/tokenizer.json"]
    else:
        names = ["model_index.json"] + [f"{sub}config.json" for sub in ("transformer/", "text_encoder/", "vae/")]
        names.append("tokenizer/tokenizer.json")
    return all((folder / name).is_file() for name in names)


def plan(api: HfApi, layout: str, revision: str | None) -> list[RemoteFile]:
    """The files a layout needs, listing the Tongyi repo for its tokenizer (and, for hf, everything else)."""
    siblings = [s.rfilename for s in api.model_info(HF_REPO, revision=revision).siblings or []]
    if layout == "comfy":
        files = [RemoteFile(COMFY_REPO, path, name) for path, name in COMFY_FILES.items()]
        wanted = [name for name in siblings if name.startswith("tokenizer/")]
    else:
        files = []
        wanted = [name for name in siblings if name == "model_index.json" or name.startswith(HF_FOLDERS)]
    if not any(name.startswith("tokenizer/") for name in wanted):
        raise DownloadError(f"{HF_REPO} on {api.endpoint} lists no tokenizer/ files; is the mirror complete?")
    return files + [RemoteFile(HF_REPO, name, name) for name in sorted(wanted)]


def resolve(remote: RemoteFile, endpoint: str, revision: str | None) -> ResolvedFile:
    """Ask the hub (HEAD) for the file's download location and size."""
    url = hf_hub_url(remote.repo_id, remote.path_in_repo, revision=revision, endpoint=endpoint)
    metadata = get_hf_file_metadata(url, endpoint=endpoint)
    if metadata.size is None:
        raise DownloadError(f"{endpoint} did not report the size of {remote.repo_id}/{remote.path_in_repo}")
    return ResolvedFile(remote, metadata.location, metadata.size)


def fetch(item: ResolvedFile, folder: Path, endpoint: str, retries: int) -> None:
    """Download one file into place, resuming `<name>.part`, retrying dropped connections."""
    destination = folder / item.remote.local_name
    if _complete(destination, item.size):
        logger.info("%s: complete (%d bytes), skipped", item.remote.local_name, item.size)
        return
    if destination.exists():
        logger.warning("%s has %d bytes, the hub says %d: downloading it again", destination,
                       destination.stat().st_size, item.size)
        destination.unlink()
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = _part_file(destination)
    for attempt in range(retries + 1):
        try:
            _stream_into(item, part, endpoint)
            break
        except httpx2.TransportError as error:
            done = part.stat().st_size if part.exists() else 0
            if attempt == retries:
                raise DownloadError(
                    f"download of {item.remote.local_name} interrupted at {done} of {item.size} bytes ({error}); "
                    "run the same command again to resume", EXIT_INTERRUPTED) from None
            logger.warning("connection lost at %d of %d bytes (%s); resuming", done, item.size, error)
            time.sleep(min(2 ** attempt, 30))
    actual = part.stat().st_size
    if actual != item.size:
        part.unlink()
        raise DownloadError(f"size check failed for {item.remote.local_name}: got {actual} bytes, the hub says "
                            f"{item.size}; the partial file was removed, run again", EXIT_INTERRUPTED)
    part.replace(destination)


def _complete(destination: Path, size: int) -> bool:
    """The file is in place with the size the hub reports."""
    return destination.is_file() and destination.stat().st_size == size


def _part_file(destination: Path) -> Path:
    """Where the download of `destination` grows until it is complete (kept between runs to resume)."""
    return destination.with_name(destination.name + ".part")


def _stream_into(item: ResolvedFile, part: Path, endpoint: str) -> None:
    """One HTTP GET from the current size of `part` (Range) to the end, with a progress bar."""
    offset = part.stat().st_size if part.exists() else 0
    if offset > item.size:
        part.unlink()
        offset = 0
    if offset == item.size:
        return
    same_host = urlsplit(item.url).netloc == urlsplit(endpoint).netloc
    headers = build_hf_headers() if same_host else {}  # a signed CDN URL must not get our token
    headers.update({"Range": f"bytes={offset}-", "Accept-Encoding": "identity"})
    with get_session().stream("GET", item.url, headers=headers, follow_redirects=True, timeout=60) as response:
        if response.status_code == 200 and offset:
            offset = 0  # the server ignored Range: start over rather than append a second copy
        elif response.status_code not in (200, 206):
            response.read()
            response.raise_for_status()
        with open(part, "ab" if offset else "wb") as sink, tqdm(
                total=item.size, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                desc=item.remote.local_name, file=sys.stderr, disable=None) as bar:
            for chunk in response.iter_bytes():  # as received: a buffered chunk would be lost on a drop
                sink.write(chunk)
                bar.update(len(chunk))


def check_disk(folder: Path, items: list[ResolvedFile]) -> None:
    """Refuse to start when the remaining bytes do not fit on the disk."""
    needed = 0
    for item in items:
        destination = folder / item.remote.local_name
        if _complete(destination, item.size):
            continue
        part = _part_file(destination)
        needed += item.size - (part.stat().st_size if part.exists() else 0)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise DownloadError(f"{folder} has {free / 1e9:.1f} GB free but {needed / 1e9:.1f} GB are still to "
                            "download; free some space or pass --dir on a bigger disk", EXIT_USAGE)


def download(folder: Path, layout: str, endpoint: str, revision: str | None = None, retries: int = 5) -> None:
    """Fetch every file of `layout` into `folder`; raises DownloadError with a readable message."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        items = [resolve(remote, endpoint, revision)
                 for remote in plan(HfApi(endpoint=endpoint), layout, revision)]
        total = sum(item.size for item in items)
        logger.info("%s layout from %s: %d files, %.2f GB, into %s", layout, endpoint, len(items), total / 1e9,
                    folder)
        check_disk(folder, items)
        for item in items:
            fetch(item, folder, endpoint, retries)
    except httpx2.TransportError as error:
        raise DownloadError(_offline_message(endpoint, error, folder, layout), EXIT_OFFLINE) from None
    except (RepositoryNotFoundError, GatedRepoError) as error:
        raise DownloadError(f"{endpoint} refused {error.response.url if error.response else ''}: "
                            f"{_first_line(error)}. If the repository needs a login, run `hf auth login` or set "
                            "HF_TOKEN; with a mirror, check it carries the repository.") from None
    except HfHubHTTPError as error:
        raise DownloadError(f"the hub answered with an error: {_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _offline_message(endpoint: str, error: Exception, folder: Path, layout: str) -> str:
    names = ", ".join(COMFY_FILES.values()) + " and tokenizer/" if layout == "comfy" else "the snapshot folders"
    return (f"cannot reach {endpoint} ({error}). This machine looks offline or the hub is blocked.\n"
            f"  - in mainland China: --mirror https://hf-mirror.com (or HF_ENDPOINT=https://hf-mirror.com)\n"
            f"  - behind a proxy: set HTTPS_PROXY\n"
            f"  - or copy {names} into {folder} by hand (see README, 'Weights').")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--layout", choices=("comfy", "hf"), default=os.environ.get("ZIMAGE_DOWNLOAD_LAYOUT", "comfy"))
    parser.add_argument("--dir", type=Path, default=None,
                        help="weights folder (default: ZIMAGE_WEIGHTS_DIR, else ./weights in the repository)")
    parser.add_argument("--mirror", default=None, help="hub endpoint, e.g. https://hf-mirror.com (default: HF_ENDPOINT)")
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    parser.add_argument("--retries", type=int, default=5, help="reconnects per file before giving up")
    parser.add_argument("--check", action="store_true", help="only report whether the weights are present")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = parse_args(argv)
    folder = (args.dir or Path(os.environ.get("ZIMAGE_WEIGHTS_DIR", REPO_ROOT / "weights"))).expanduser()
    if not folder.is_absolute():
        folder = REPO_ROOT / folder  # the app resolves a relative weights_dir from the repository too
    present = [layout for layout in ("comfy", "hf") if weights_present(folder, layout)]
    if present:  # either layout serves the app, whichever --layout would download
        print(f"weights present in {folder} ({present[0]} layout)")
        return 0
    if args.check:
        print(f"weights missing in {folder} ({args.layout} layout)")
        return 1
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        print("HF_HUB_OFFLINE is set, so nothing can be downloaded: unset it and run again", file=sys.stderr)
        return EXIT_OFFLINE
    endpoint = (args.mirror or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    try:
        download(folder, args.layout, endpoint, args.revision, args.retries)
    except DownloadError as error:
        print(f"download_weights: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"weights ready in {folder} ({args.layout} layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
