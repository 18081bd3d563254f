"""The model bundle on disk: the one module that both writes and reads it.

Layout of ``<root>/<version>/``::

    manifest.json          what the bundle is: schema, evidence, metrics, SHA-256 of every file
    manifest.sig           optional HMAC-SHA256 of manifest.json (key from the environment)
    imputer.joblib         sklearn SimpleImputer(strategy="median") over the numeric inputs
    scaler.joblib          sklearn StandardScaler over the (log-transformed) cluster features
    pca.joblib             sklearn PCA
    kmeans.joblib          sklearn KMeans (an RFM bundle: the groups' centres in PCA space)
    segment_names.joblib   list[str], one name per segment id
    response_model.joblib  lightgbm.Booster (absent for a segmentation-only bundle)
    response_model.txt     the same model in LightGBM's own text format
    control_model.joblib   lightgbm.Booster: response *without* the campaign (uplift bundles only;
                           same input columns as the response model)
    control_model.txt      the same model in LightGBM's own text format
    response_model.o       optional: the same trees compiled to native code (lleaves), with
    response_model_check.npy  the fixed sample it must reproduce (scoring/compiled_trees.py)
    control_model.o        optional: the control model compiled the same way, with
    control_model_check.npy   its own check sample
    mixture.joblib         sklearn GaussianMixture (full covariances) in PCA space: present when
                           the bundle serves the mixture (``served_clustering``), whose means
                           then are the centres and which adds membership probabilities
    profiles.json          per-segment profile (size, share, means, medians, response rates, ...)
    campaigns.json         the campaign pool
    assignments.npz        optional: training customers' ids and segment ids (numpy, no pickle),
                           read only by re-segmentation (:func:`load_assignments`)
    evidence.json          optional: the data behind the report's charts (map sample, dendrogram,
                           segment z-scores), so a report can be rebuilt from the bundle alone

``<root>/current`` is a symlink naming the live version; it is switched atomically.

Loading verifies, *before anything is unpickled*: the manifest's format, the optional HMAC
signature, that every required file is listed, present and has the recorded SHA-256, and that
the installed scikit-learn, LightGBM and NumPy match the versions the bundle was written with.
The compiled response and control models are native code and follow the same rule; each is used
only on the platform it was built for and when it reproduces LightGBM on its check sample (else
LightGBM serves that model, and ``Bundle.compiled_status`` / ``compiled_control_status`` say why).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from scoring import compiled_trees
from scoring.campaigns import Campaign
from scoring.compiled_trees import CompiledArtifact, CompiledForest, CompiledStatus
from scoring.features import FeatureSchema

FORMAT_NAME = "segment-campaign-bundle"
FORMAT_VERSION = 1
CURRENT = "current"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"

PICKLES = ("imputer", "scaler", "pca", "kmeans", "segment_names")
RESPONSE_PICKLE = "response_model.joblib"
RESPONSE_TEXT = "response_model.txt"
CONTROL_PICKLE = "control_model.joblib"
CONTROL_TEXT = "control_model.txt"
MIXTURE_PICKLE = "mixture.joblib"
JSON_FILES = ("profiles.json", "campaigns.json")
ASSIGNMENTS = "assignments.npz"
EVIDENCE = "evidence.json"
#: libraries whose major.minor must match between writer and reader (pickle compatibility)
CHECKED_LIBRARIES = ("scikit-learn", "lightgbm", "numpy")
#: manifest key describing the compiled response model (absent: none was built)
COMPILED = "compiled_response_model"
#: manifest key describing the compiled control model of an uplift bundle (absent: none)
COMPILED_CONTROL = "compiled_control_model"
#: per compiled model: manifest key, the manifest flag of its booster, its booster's text file,
#: the object and check-sample file names
_COMPILED_KINDS = (
    (COMPILED, "has_response_model", RESPONSE_TEXT, compiled_trees.OBJECT_FILE,
     compiled_trees.SAMPLE_FILE),
    (COMPILED_CONTROL, "has_control_model", CONTROL_TEXT, compiled_trees.CONTROL_OBJECT_FILE,
     compiled_trees.CONTROL_SAMPLE_FILE),
)  # fmt: skip
#: files that are code when loaded: a bundle folder may not hold one its manifest does not list
CODE_SUFFIXES = (".joblib", ".pkl", ".pickle", ".o", ".so", ".npy")


class BundleError(Exception):
    """A bundle cannot be written or loaded; the message says which file and why."""


def library_versions() -> dict[str, str]:
    """Versions of the libraries a bundle depends on, as installed now."""
    import lightgbm
    import sklearn

    return {
        "scikit-learn": sklearn.__version__,
        "lightgbm": lightgbm.__version__,
        "numpy": np.__version__,
        "joblib": joblib.__version__,
    }


@dataclass
class Bundle:
    """A loaded, verified bundle (or one about to be written)."""

    schema: FeatureSchema
    imputer: Any
    scaler: Any
    pca: Any
    kmeans: Any
    segment_names: list[str]
    profiles: list[dict[str, Any]]
    campaigns: list[Campaign]
    response_model: Any = None
    #: the uplift bundle's model of responding without the campaign (None: rank by response)
    control_model: Any = None
    #: the served Gaussian mixture (None: K-Means serves, nearest centre)
    mixture: Any = None
    #: manifest fields beyond what the writer fills in (config, evidence, metrics, ...)
    manifest: dict[str, Any] = field(default_factory=dict)
    #: the report's chart data (``evidence.json``), or None
    evidence: dict[str, Any] | None = None
    path: Path | None = None
    #: True when the manifest carried a signature that was checked against a key
    signature_verified: bool = False
    #: (ids as text, segment ids) of the training customers, written to assignments.npz; never
    #: loaded with the bundle (see :func:`load_assignments`)
    assignments: tuple[np.ndarray, np.ndarray] | None = None
    #: to write: the response model compiled by training (None: serve through LightGBM)
    compiled: CompiledArtifact | None = None
    #: after loading: the compiled trees when they may be used here, and which path serves
    compiled_forest: CompiledForest | None = None
    compiled_status: CompiledStatus | None = None
    #: the same for the control model of an uplift bundle
    compiled_control: CompiledArtifact | None = None
    compiled_control_forest: CompiledForest | None = None
    compiled_control_status: CompiledStatus | None = None

    @property
    def version(self) -> str:
        """The bundle's version name (its folder name)."""
        return str(self.manifest.get("version", ""))

    @property
    def n_segments(self) -> int:
        """Number of segments (k)."""
        return len(self.segment_names)


# ---- writing --------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (dt.datetime, dt.date)):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def dump_json(obj: Any, path: Path) -> None:
    """Write JSON deterministically (sorted keys, NaN refused: NaN is not JSON)."""
    path.write_text(
        json.dumps(obj, indent=2, sort_keys=True, default=_json_default, allow_nan=False) + "\n"
    )


def sign(manifest_bytes: bytes, key: bytes) -> str:
    """HMAC-SHA256 of the manifest bytes, hex."""
    return hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest()


def new_version(fingerprint: str = "", now: dt.datetime | None = None) -> str:
    """A sortable, unique-enough version name: UTC time plus a short data fingerprint."""
    now = now or dt.datetime.now(dt.UTC)
    stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{fingerprint[:8]}" if fingerprint else stamp


def write_bundle(
    bundle: Bundle,
    root: str | os.PathLike,
    *,
    version: str | None = None,
    hmac_key: bytes | None = None,
    make_current: bool = True,
) -> Path:
    """Write ``bundle`` to ``root/<version>/`` atomically and point ``root/current`` at it.

    Everything goes to a temporary folder inside ``root`` first and is renamed into place, so a
    failure leaves neither a half bundle nor a changed ``current``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    fingerprint = str(bundle.manifest.get("data_fingerprint", {}).get("sha256", ""))
    version = version or new_version(fingerprint)
    final = root / version
    if final.exists():
        raise BundleError(f"bundle version {version!r} already exists in {root}")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=root))
    try:
        for name in PICKLES:
            joblib.dump(getattr(bundle, name), tmp / f"{name}.joblib")
        if bundle.response_model is not None:
            joblib.dump(bundle.response_model, tmp / RESPONSE_PICKLE)
            bundle.response_model.save_model(str(tmp / RESPONSE_TEXT))
            if bundle.compiled is not None:
                (tmp / compiled_trees.OBJECT_FILE).write_bytes(bundle.compiled.object_code)
                np.save(tmp / compiled_trees.SAMPLE_FILE, bundle.compiled.sample)
        if bundle.control_model is not None:
            if bundle.response_model is None:
                raise BundleError("a control model needs a response model beside it")
            joblib.dump(bundle.control_model, tmp / CONTROL_PICKLE)
            bundle.control_model.save_model(str(tmp / CONTROL_TEXT))
            if bundle.compiled_control is not None:
                code = bundle.compiled_control.object_code
                (tmp / compiled_trees.CONTROL_OBJECT_FILE).write_bytes(code)
                np.save(tmp / compiled_trees.CONTROL_SAMPLE_FILE, bundle.compiled_control.sample)
        if bundle.mixture is not None:
            joblib.dump(bundle.mixture, tmp / MIXTURE_PICKLE)
        if bundle.assignments is not None:
            ids, segments = bundle.assignments
            np.savez_compressed(
                tmp / ASSIGNMENTS,
                ids=np.asarray(ids).astype(str),
                segments=np.asarray(segments, dtype=np.int32),
            )
        dump_json(bundle.profiles, tmp / "profiles.json")
        dump_json([c.to_dict() for c in bundle.campaigns], tmp / "campaigns.json")
        if bundle.evidence is not None:
            dump_json(bundle.evidence, tmp / EVIDENCE)

        files = {
            p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir())
        }
        manifest = dict(bundle.manifest)
        manifest.update(
            format=FORMAT_NAME,
            format_version=FORMAT_VERSION,
            version=version,
            created_at=manifest.get("created_at")
            or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            library_versions=library_versions(),
            feature_schema=bundle.schema.to_dict(),
            segments={"k": bundle.n_segments, "names": list(bundle.segment_names)},
            has_response_model=bundle.response_model is not None,
            has_control_model=bundle.control_model is not None,
            served_clustering=served_clustering(bundle),
            files=files,
        )
        artifacts = {
            COMPILED: bundle.compiled if bundle.response_model is not None else None,
            COMPILED_CONTROL: bundle.compiled_control if bundle.control_model is not None else None,
        }
        for key, _, _, object_file, sample_file in _COMPILED_KINDS:
            manifest.pop(key, None)
            if artifacts[key] is not None:
                manifest[key] = {
                    "file": object_file,
                    "sample": sample_file,
                    "platform": artifacts[key].platform,
                    "tolerance": compiled_trees.TOLERANCE,
                }
        dump_json(manifest, tmp / MANIFEST)
        if hmac_key:
            (tmp / SIGNATURE).write_text(sign((tmp / MANIFEST).read_bytes(), hmac_key) + "\n")
        os.chmod(tmp, 0o755)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    bundle.manifest = manifest
    bundle.path = final
    if make_current:
        set_current(root, version)
    return final


def served_clustering(bundle: Bundle) -> str:
    """What assigns segments: "kmeans" (nearest centre), "gaussian_mixture" or "rfm" (the RFM
    groups of ``manifest.rfm``, :mod:`scoring.rfm`; ``kmeans.joblib`` then holds the groups'
    centres in PCA space, for distances only)."""
    if bundle.mixture is not None:
        return "gaussian_mixture"
    if (bundle.manifest.get("rfm") or {}).get("segments"):
        return "rfm"
    return "kmeans"


def set_current(root: str | os.PathLike, version: str) -> None:
    """Atomically point ``root/current`` at ``root/<version>`` (a relative symlink)."""
    root = Path(root)
    if not (root / version / MANIFEST).is_file():
        raise BundleError(f"no bundle {version!r} in {root}")
    link = root / f".{CURRENT}.tmp-{os.getpid()}"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(version, link)
    os.replace(link, root / CURRENT)


def list_versions(root: str | os.PathLike) -> list[str]:
    """Bundle versions present under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir()
        and not p.is_symlink()
        and not p.name.startswith(".")
        and (p / MANIFEST).is_file()
    )


def resolve(root: str | os.PathLike, version: str | None = None) -> Path:
    """Path of bundle ``version`` under ``root``, or of the one ``current`` names."""
    root = Path(root)
    if version:
        if "/" in version or version.startswith(".") or version == CURRENT:
            raise BundleError(f"invalid bundle version {version!r}")
        path = root / version
    else:
        link = root / CURRENT
        if not link.exists():
            raise BundleError(f"no current bundle in {root} (train one first)")
        path = link.resolve()
    if not (path / MANIFEST).is_file():
        raise BundleError(f"no bundle at {path} ({MANIFEST} missing)")
    return path


# ---- reading --------------------------------------------------------------------------------
def _major_minor(v: str) -> tuple[str, ...]:
    return tuple(v.split(".")[:2])


def verify(
    path: str | os.PathLike, *, hmac_key: bytes | None = None, check_versions: bool = True
) -> dict[str, Any]:
    """Check a bundle folder without unpickling anything; return its manifest or raise."""
    path = Path(path)
    manifest_path = path / MANIFEST
    try:
        raw = manifest_path.read_bytes()
        manifest = json.loads(raw)
    except FileNotFoundError:
        raise BundleError(f"{manifest_path}: missing") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{manifest_path}: unreadable ({exc.__class__.__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise BundleError(f"{manifest_path}: not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: format_version={manifest.get('format_version')!r}, "
            f"this code reads {FORMAT_VERSION}"
        )

    sig_path = path / SIGNATURE
    if hmac_key:
        if not sig_path.is_file():
            raise BundleError(f"{path}: unsigned bundle, but a signing key is configured")
        expected = sign(raw, hmac_key)
        if not hmac.compare_digest(expected, sig_path.read_text().strip()):
            raise BundleError(f"{sig_path}: signature does not match the manifest")

    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{manifest_path}: no file list")
    required = [f"{n}.joblib" for n in PICKLES] + list(JSON_FILES)
    if manifest.get("has_response_model"):
        required.append(RESPONSE_PICKLE)
    if manifest.get("has_control_model"):
        required.append(CONTROL_PICKLE)
    for key, has_model, text_file, _, _ in _COMPILED_KINDS:
        compiled = manifest.get(key)
        if compiled is not None:
            if not isinstance(compiled, dict) or not manifest.get(has_model):
                raise BundleError(f"{manifest_path}: {key} without its model ({has_model})")
            required += [text_file, str(compiled.get("file")), str(compiled.get("sample"))]
    if manifest.get("served_clustering") == "gaussian_mixture":
        required.append(MIXTURE_PICKLE)
    if manifest.get("served_clustering") == "rfm" and not (manifest.get("rfm") or {}).get(
        "segments"
    ):
        raise BundleError(f"{manifest_path}: served_clustering is rfm but there is no rfm rule")
    for name in required:
        if name not in files:
            raise BundleError(f"{manifest_path}: required file {name} is not listed")
    for name, meta in files.items():
        if "/" in name or "\\" in name or name.startswith("."):
            raise BundleError(f"{manifest_path}: invalid file name {name!r}")
        fpath = path / name
        if not fpath.is_file():
            raise BundleError(f"{fpath}: listed in the manifest but missing")
        digest = _sha256(fpath)
        if not hmac.compare_digest(digest, str(meta.get("sha256", ""))):
            raise BundleError(f"{fpath}: SHA-256 {digest[:12]}… does not match the manifest")
    unlisted = sorted(
        p.name for p in path.iterdir() if p.suffix in CODE_SUFFIXES and p.name not in files
    )
    if unlisted:
        raise BundleError(
            f"{path}: pickle or code files not in the manifest: {', '.join(unlisted)}"
        )

    if check_versions:
        written = manifest.get("library_versions", {})
        installed = library_versions()
        for lib in CHECKED_LIBRARIES:
            if _major_minor(str(written.get(lib, "?"))) != _major_minor(installed[lib]):
                raise BundleError(
                    f"{path}: written with {lib} {written.get(lib)}, installed is "
                    f"{installed[lib]}; retrain or install the matching version"
                )
    return manifest


def load_bundle(
    path: str | os.PathLike, *, hmac_key: bytes | None = None, check_versions: bool = True
) -> Bundle:
    """Verify the bundle at ``path`` (a version folder) and only then unpickle it."""
    path = Path(path)
    manifest = verify(path, hmac_key=hmac_key, check_versions=check_versions)
    try:
        objs = {name: joblib.load(path / f"{name}.joblib") for name in PICKLES}
        response_model = (
            joblib.load(path / RESPONSE_PICKLE) if manifest.get("has_response_model") else None
        )
        mixture = (
            joblib.load(path / MIXTURE_PICKLE)
            if manifest.get("served_clustering") == "gaussian_mixture"
            else None
        )
        control_model = (
            joblib.load(path / CONTROL_PICKLE) if manifest.get("has_control_model") else None
        )
        forest, status = _compiled_model(path, manifest, response_model, COMPILED)
        control_forest, control_status = _compiled_model(
            path, manifest, control_model, COMPILED_CONTROL
        )
        profiles = json.loads((path / "profiles.json").read_text())
        campaigns = [Campaign(**c) for c in json.loads((path / "campaigns.json").read_text())]
        schema = FeatureSchema.from_dict(manifest["feature_schema"])
        evidence = (
            json.loads((path / EVIDENCE).read_text()) if EVIDENCE in manifest["files"] else None
        )
    except BundleError:
        raise
    except Exception as exc:  # noqa: BLE001 -- a verified but inconsistent bundle: say so
        raise BundleError(f"{path}: cannot load ({exc.__class__.__name__}: {exc})") from None
    if len(objs["segment_names"]) != len(profiles):
        raise BundleError(
            f"{path}: {len(profiles)} profiles for {len(objs['segment_names'])} segments"
        )
    return Bundle(
        schema=schema,
        profiles=profiles,
        campaigns=campaigns,
        response_model=response_model,
        control_model=control_model,
        mixture=mixture,
        evidence=evidence,
        manifest=manifest,
        path=path,
        signature_verified=bool(hmac_key),
        compiled_forest=forest,
        compiled_status=status,
        compiled_control_forest=control_forest,
        compiled_control_status=control_status,
        **objs,
    )


def load_assignments(
    path: str | os.PathLike, *, hmac_key: bytes | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """The training customers' (ids, segment ids) of a verified bundle; None when not kept."""
    path = Path(path)
    manifest = verify(path, hmac_key=hmac_key, check_versions=False)
    if ASSIGNMENTS not in manifest.get("files", {}):
        return None
    try:
        with np.load(path / ASSIGNMENTS, allow_pickle=False) as data:
            return data["ids"], data["segments"].astype(np.int64)
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"{path / ASSIGNMENTS}: unreadable ({exc})") from None


def _compiled_model(
    path: Path, manifest: dict[str, Any], booster: Any, key: str
) -> tuple[CompiledForest | None, CompiledStatus | None]:
    """The verified bundle's compiled trees of ``booster`` (manifest entry ``key``), if they may
    serve here (see compiled_trees); (None, None) without the booster."""
    if booster is None:
        return None, None
    entry = manifest.get(key)
    if entry is None:
        return None, CompiledStatus(False, "the bundle has no compiled trees")
    sample = np.load(path / str(entry["sample"]), allow_pickle=False)
    return compiled_trees.load_checked(
        path / str(entry["file"]), entry.get("platform", {}), sample, booster
    )


def load_current(root: str | os.PathLike, version: str | None = None, **kwargs: Any) -> Bundle:
    """Load the bundle ``current`` names under ``root`` (or the named version)."""
    return load_bundle(resolve(root, version), **kwargs)
