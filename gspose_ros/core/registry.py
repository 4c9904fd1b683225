"""On-disk registry of registered objects: one directory per object, one per version.

    <root>/<object_id>/v000003/{model.safetensors, info.json}
    <root>/<object_id>/CURRENT        (the name of the complete, current version)

A version is written into a temporary directory and renamed into place, then
CURRENT is replaced atomically, so a reader (or a crash) never sees half an
object; the previous version is kept until a newer one is complete. Files are
safetensors + JSON only: nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time

from .errors import InputError
from .gaussians import GaussianObject, load_gaussians, save_gaussians

MAX_OBJECT_ID_LENGTH = 64
MODEL_FILE = "model.safetensors"
INFO_FILE = "info.json"
CURRENT_FILE = "CURRENT"


def check_object_id(object_id) -> str:
    """Object ids name directories and TF frames: 1-64 of [A-Za-z0-9_-], not starting with '-'."""
    if not isinstance(object_id, str) or not object_id:
        raise InputError("object id must be a non-empty string")
    if len(object_id) > MAX_OBJECT_ID_LENGTH:
        raise InputError(f"object id longer than {MAX_OBJECT_ID_LENGTH} characters")
    if not all(c.isascii() and (c.isalnum() or c in "_-") for c in object_id) or object_id[0] == "-":
        raise InputError(f"object id {object_id!r} may contain only letters, digits, '_' and '-' "
                         "(and may not start with '-')")
    return object_id


def _write_atomic(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Registry:
    def __init__(self, root: str):
        self.root = os.path.abspath(os.path.expanduser(root))
        os.makedirs(self.root, exist_ok=True)
        self._lock = threading.Lock()

    def _dir(self, object_id: str) -> str:
        return os.path.join(self.root, check_object_id(object_id))

    def current_version(self, object_id: str) -> str | None:
        try:
            with open(os.path.join(self._dir(object_id), CURRENT_FILE)) as f:
                version = f.read().strip()
        except FileNotFoundError:
            return None
        if not (version.startswith("v") and version[1:].isdigit()):
            raise InputError(f"registry entry {object_id!r} is corrupt (CURRENT holds {version[:20]!r})")
        return version

    def save(self, object_id: str, obj: GaussianObject, info: dict | None = None) -> str:
        """Store a new version of an object; returns its version name ('v000001', ...)."""
        obj_dir = self._dir(object_id)
        with self._lock:
            os.makedirs(obj_dir, exist_ok=True)
            versions = self._versions(obj_dir)
            version = f"v{(int(versions[-1][1:]) + 1) if versions else 1:06d}"
            staging = tempfile.mkdtemp(dir=obj_dir, prefix=".staging-")
            try:
                save_gaussians(obj, os.path.join(staging, MODEL_FILE))
                meta = dict(info or {}, object_id=object_id, version=version, saved_unix=time.time())
                _write_atomic(os.path.join(staging, INFO_FILE), json.dumps(meta, indent=1, default=float))
                os.rename(staging, os.path.join(obj_dir, version))
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            previous = self.current_version(object_id)
            _write_atomic(os.path.join(obj_dir, CURRENT_FILE), version)
            for old in versions:  # keep the previous version, drop older ones
                if old not in (previous, version):
                    shutil.rmtree(os.path.join(obj_dir, old), ignore_errors=True)
            return version

    @staticmethod
    def _versions(obj_dir: str) -> list[str]:
        return sorted(d for d in os.listdir(obj_dir) if d.startswith("v") and d[1:].isdigit())

    def load(self, object_id: str, device="cpu") -> tuple[GaussianObject, dict]:
        version = self.current_version(object_id)
        if version is None:
            raise InputError(f"unknown object {object_id!r} in registry {self.root}")
        vdir = os.path.join(self._dir(object_id), version)
        obj = load_gaussians(os.path.join(vdir, MODEL_FILE), device)
        try:
            with open(os.path.join(vdir, INFO_FILE)) as f:
                info = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"registry entry {object_id!r} {version}: unreadable {INFO_FILE}: {exc}") from exc
        return obj, info if isinstance(info, dict) else {}

    def list(self) -> list[str]:
        ids = []
        for name in sorted(os.listdir(self.root)):
            try:
                if self.current_version(name) is not None:
                    ids.append(name)
            except InputError:
                continue
        return ids

    def remove(self, object_id: str) -> bool:
        obj_dir = self._dir(object_id)
        with self._lock:
            if not os.path.isdir(obj_dir):
                return False
            trash = tempfile.mkdtemp(dir=self.root, prefix=".removed-")
            os.rename(obj_dir, os.path.join(trash, object_id))  # atomic: gone for readers at once
            shutil.rmtree(trash, ignore_errors=True)
            return True
