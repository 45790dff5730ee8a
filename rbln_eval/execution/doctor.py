"""``rbln-eval doctor``: what this machine offers for compiling and evaluating (also ``scripts/check_npu.py``).

Toolchain versions, NPUs (``rebel`` and ``rbln-smi``, else ``rbln-stat``), CUDA devices, the model families and the
architectures each one verifies, the store, its remotes, and whether a Hub token is configured (never the token itself).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from rbln_eval.execution.devices import DeviceReport, detect, first_free_npu
from rbln_eval.identity import TOOLCHAIN_PACKAGES, package_version
from rbln_eval.store import Store
from rbln_eval.util.units import human_size

#: The toolchain of a bundle's key, and lm_eval, which scores it.
PACKAGES = (*TOOLCHAIN_PACKAGES, "lm-eval")
EXAMPLE_TARGET = "RBLN-CA25"
#: What turns the simulator on, by the rebel found: none, or a real SDK (which the simulator never shadows unasked).
SIMULATE_SETTINGS = {None: "RBLN_EVAL_SIMULATE=1", "sdk": "RBLN_EVAL_SIMULATE=force"}


def _remotes(store: Store) -> tuple[list[dict[str, Any]], str | None]:
    try:
        from rbln_eval.remotes import load_specs

        return [{"name": s.name, "kind": s.kind, "location": s.location} for s in load_specs(store)], None
    except Exception as exc:  # a broken remotes.json must not break the diagnosis
        return [], str(exc)


def _hub_token() -> dict[str, Any]:
    """Whether a Hub token is configured and where from; the token itself is never read out."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(name):
            return {"present": True, "source": f"environment ({name})"}
    try:
        from huggingface_hub import constants

        path = Path(constants.HF_TOKEN_PATH)
        if path.is_file() and path.read_text().strip():
            return {"present": True, "source": str(path)}
    except Exception:
        pass
    return {"present": False, "source": None}


def _types(lookup: Callable[[], list[str]]) -> list[str] | None:
    """A family's model types, or ``None`` where they cannot be listed here (optimum-rbln needs the ``rebel`` SDK)."""
    try:
        return list(lookup())
    except Exception:  # the diagnosis goes on without them
        return None


def _families() -> list[dict[str, Any]]:
    """Every registered family: the architectures optimum-rbln compiles for it and those rbln-eval verifies."""
    from rbln_eval.families.registry import families

    return [
        {"name": family.name, "compiled": _types(family.supported_types), "verified": _types(family.verified_types)}
        for family in families()
    ]


def families_line(families: list[dict[str, Any]]) -> str:
    """One line: each family, with its verified architectures where they are not all it compiles."""
    shown = []
    for family in families:
        verified, compiled = family["verified"], family["compiled"]
        if verified is None or (compiled is not None and set(verified) == set(compiled)):
            shown.append(family["name"])
            continue
        of = f"; optimum-rbln compiles {len(compiled)}" if compiled is not None else ""
        shown.append(f"{family['name']} (verified: {', '.join(verified)}{of})")
    return "families: " + ", ".join(shown)


def _store_info(store: Store) -> dict[str, Any]:
    info: dict[str, Any] = {"path": str(store.root.absolute()), "exists": store.root.is_dir()}
    if info["exists"]:
        info["size_bytes"] = store.size_bytes()
        info["bundles"] = sum(1 for _ in store.digests())
    return info


def collect(store: Store, report: DeviceReport | None = None) -> dict[str, Any]:
    """Everything ``doctor`` prints, as JSON-ready data."""
    report = report if report is not None else detect()
    remotes, remotes_problem = _remotes(store)
    default = first_free_npu(report)
    return {
        "toolchain": {package: package_version(package) for package in PACKAGES},
        "devices": report.to_json(),
        "default_device": None if default is None else f"npu:{default}",
        "families": _families(),
        "store": _store_info(store),
        "remotes": remotes,
        "remotes_problem": remotes_problem,
        "hub_token": _hub_token(),
    }


def _size(num: int | None) -> str:
    return "?" if num is None else human_size(num)


def render(data: dict[str, Any], console: Console) -> None:
    """Print :func:`collect`'s data for humans."""
    p = lambda text="": console.print(text, markup=False, highlight=False)  # noqa: E731
    devices = data["devices"]
    p("toolchain")
    for package, version in data["toolchain"].items():
        note = " (simulator)" if package == "rebel-compiler" and devices["rebel"] == "simulator" else ""
        p(f"  {package:15} {version or 'not installed'}{note}")
    p()
    npus = devices["npus"]
    rebel = {"sdk": "rebel SDK", "simulator": "rebel simulator (RBLN_EVAL_SIMULATE)", None: "no rebel SDK"}[devices["rebel"]]
    tool = devices.get("smi_tool") or "rbln-stat"
    stat = f"{tool} at {devices['rbln_stat']}" if devices["rbln_stat"] else "rbln-smi (or rbln-stat) not on PATH"
    p(f"NPUs: {len(npus)} ({rebel}; {stat}" + (f"; KMD {devices['kmd_version']}" if devices["kmd_version"] else "") + ")")
    if devices.get("visible") is not None:
        shown = ",".join(str(d) for d in devices["visible"]) or "none"
        p(f"  RBLN_DEVICES={shown}: this process places replicas only on these NPUs")
    if npus:
        table = Table(box=None, pad_edge=False)
        for column in ("npu", "name", "device", "memory used / total", "temp", "util", "state"):
            table.add_column(column)
        for npu in npus:
            memory = "-" if npu["memory_total"] is None else f"{_size(npu['memory_used'])} / {_size(npu['memory_total'])}"
            outside = devices.get("visible") is not None and npu["index"] not in devices["visible"]
            state = "not in RBLN_DEVICES" if outside else "unavailable" if not npu["available"] else ("busy" if npu["busy"] else "free")
            table.add_row(
                str(npu["index"]), npu["name"] or "?", npu["device"] or "-", memory,
                npu["temperature"] or "-", npu["util"] or "-", state,
            )
        console.print(table)
        p(f"  runs without --device use {data['default_device']} (the first free NPU); choose with --device npu:N")
    else:
        p(
            f"  no NPU found: bundles can still be compiled for a target, e.g. "
            f"`rbln-eval compile MODEL --npu {EXAMPLE_TARGET}` (needs rebel-compiler), "
            "and evaluated on a machine with that NPU"
        )
        if devices["rebel"] != "simulator":
            setting = SIMULATE_SETTINGS[devices["rebel"]]
            p(
                f"  to try rbln-eval here without an NPU, set {setting}: a CPU simulator of the rebel SDK "
                "(simulated bundles get a SIM- target)"
            )
    cuda = devices["cuda"]
    if cuda:
        p(f"CUDA: {len(cuda)} device(s) (used by the HF reference of `rbln-eval compare`)")
        for gpu in cuda:
            p(f"  cuda:{gpu['index']}  {gpu['name']}  {_size(gpu['memory_total'])}")
    else:
        p("CUDA: none (the HF reference of `rbln-eval compare` runs on CPU)")
    p(f"device priority: NPU → CUDA → CPU; this machine: {devices['kind']}")
    p()
    p(families_line(data["families"]))
    store = data["store"]
    if store["exists"]:
        p(f"store: {store['path']} ({store['bundles']} bundle(s), {_size(store['size_bytes'])})")
    else:
        p(f"store: {store['path']} (not created yet)")
    if data["remotes_problem"]:
        p(f"remotes: {data['remotes_problem']}")
    elif data["remotes"]:
        p("remotes:")
        for remote in data["remotes"]:
            p(f"  {remote['name']}  {remote['kind']}  {remote['location']}")
    else:
        p("remotes: none (add one with `rbln-eval remote add`)")
    token = data["hub_token"]
    p(f"Hub token: {'present, from ' + token['source'] if token['present'] else 'not set (public models only)'}")
    for problem in devices["problems"]:
        p(f"warning: {problem}")


def main(argv: list[str] | None = None) -> int:
    """``scripts/check_npu.py``: print the doctor report for the default store."""
    import argparse
    import json

    from rbln_eval.store import default_store_path

    parser = argparse.ArgumentParser(description="Check the NPUs, toolchain and store of this machine.")
    parser.add_argument("--store", default=None, help="store directory (default: $RBLN_EVAL_STORE or ./artifacts)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    data = collect(Store(args.store or default_store_path()))
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        render(data, Console(highlight=False, soft_wrap=True))
    return 0
