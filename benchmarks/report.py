"""The human-readable tables of a run (the JSON line holds the same numbers and more)."""
from benchmarks.memory import MIB, PROBE_ITERATIONS
from benchmarks.phases import PHASES


def format_header(env):
    """Machine, versions, threads and allocator: four lines."""
    pools = ", ".join(f"{p['library']} {p.get('version') or ''} ({p['threads']} threads)"
                      for p in env["threads"]["pools"])
    malloc = env["malloc"]
    variables = " ".join(f"{k}={v}" for k, v in env["environment"].items()) or "none"
    setting = "keep_freed_memory() applied" if malloc["keep_freed_memory"] else "glibc defaults"
    return [
        f"device {env['device']}{' (' + env['gpu'] + ')' if env['gpu'] else ''}, cpu {env['cpu']} "
        f"({env['cpus_usable']} usable), batch {env['batch_size']}, SN mode {env.get('sn_mode', 'matrix')}, "
        "load average at start "
        + " ".join(f"{v:.2f}" for v in env["load_average_at_start"] or ()),
        "versions " + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        + f", git {env['git']['commit']}{' (npsn/ modified)' if env['git']['npsn_modified'] else ''}",
        f"threads: requested {env['threads']['requested']}; {pools}"
        + (f"; torch {env['threads']['torch']}" if env["threads"]["torch"] is not None else "")
        + f"; environment: {variables}",
        f"malloc: {malloc['mode']} ({setting}); freed 64 MiB block reused without page faults: "
        f"{'yes' if malloc['freed_64MiB_block_reused'] else 'no'}",
    ]


def format_check(c):
    """The agreement with PyTorch (:func:`npsn.testing.torch_reference.compare_training`)."""
    return ["   check against torch, max relative error: float64 "
            + ", ".join(f"{k} {v:.1e}" for k, v in c["max_rel_error_float64"].items()),
            "   float32 " + ", ".join(f"{k} {v:.1e}" for k, v in c["max_rel_error_float32"].items())
            + " (D's input gradient is kink-sensitive in float32)",
            f"   losses of {len(c['losses']['npsn'])} training iterations from the same weights and batches "
            f"(float32): max relative difference {c['loss_error']:.1e}"
            + ("   -> agree" if c["ok"] else "   ** MISMATCH: see npsn.testing.torch_reference.compare_training **")]


def format_phases(r):
    """One row per phase: each side's median [min, max], and npsn / torch when comparing."""
    sides = list(next(iter(r["phases"].values())))
    header = f"   {'phase':<24}" + "".join(f"{s + ' median [min, max]':>32}" for s in sides)
    lines = [header + (f"{'npsn/torch':>12}" if "torch" in sides else ""), "   " + "-" * (len(header) + 9)]
    for phase, label in PHASES:
        p = r["phases"][phase]
        row = f"   {label:<24}" + "".join(
            f"{p[s]['median_s']:>12.3f} s [{p[s]['min_s']:.3f}, {p[s]['max_s']:.3f}]".rjust(32) for s in sides)
        if "torch" in sides:
            row += f"{r['ratios'][phase]:>12.2f}"
        lines.append(row)
    return lines


def format_breakdown(r):
    b = r["breakdown"]
    text = (f"   npsn iteration {b['iteration']:.3f} s = convolution matrix products {b['matrix_products']:.3f} s"
            f" + im2col/col2im {b['im2col_col2im']:.3f} s + other {b['other']:.3f} s (medians, separate run)")
    if "torch" in r["phases"]["iteration"]:
        torch_iteration = r["phases"]["iteration"]["torch"]["median_s"]
        text += f"; the products alone are {b['matrix_products'] / torch_iteration:.2f} x torch's iteration"
    return [text]


def format_launches(r):
    """Device operations, syncs and copies of one steady-state iteration (:mod:`benchmarks.launches`)."""
    c = r["launches"]
    if c is None:
        return ["   device work per iteration: not counted (the strict CuPy stand-in, tests/strict_cupy, is absent)"]
    return [f"   device work per iteration (counted on the strict CuPy stand-in): {c['ops']} operations, "
            f"{c['syncs']} syncs, {c['h2d']} host-to-device and {c['d2h']} device-to-host copies; most frequent: "
            + ", ".join(f"{name} {n}" for name, n in c["top"][:5]),
            f"   device memory per iteration (counted on the stand-in, 512-byte blocks): {c['start_bytes'] / MIB:.1f} MiB "
            f"live at the start, peak {c['peak_bytes'] / MIB:.1f} MiB; at the peak, made by: "
            + ", ".join(f"{name} {n / MIB:.1f} MiB" for name, n in c["peak_by"])]


def format_memory(r):
    lines = []
    for side, m in r.get("memory", {}).items():
        if "error" in m:
            lines.append(f"   peak memory {side}: probe failed: {m['error']}")
            continue
        text = (f"   peak memory {side} (fresh process, {PROBE_ITERATIONS} iterations): host RSS "
                f"{m['host_rss_peak'] / MIB:.0f} MiB (+{(m['host_rss_peak'] - m['host_rss_baseline']) / MIB:.0f} "
                "over the process after imports)")
        if "device_pool_bytes" in m:
            text += f"; CuPy pool {m['device_pool_bytes'] / MIB:.0f} MiB"
        if "device_max_allocated" in m:
            text += (f"; CUDA max allocated {m['device_max_allocated'] / MIB:.0f} MiB, "
                     f"reserved {m['device_max_reserved'] / MIB:.0f} MiB")
        lines.append(text)
    return lines


def format_report(env, results):
    """The tables: the run's header, then per model its configuration, check, phases, breakdown and memory."""
    lines = format_header(env)
    for key, r in results.items():
        cfg, model = r["config"], key.split("@")[0]
        lines += ["", f"== {key}: G ch {cfg['g_ch']} ({cfg['g_parameters'] / 1e6:.2f} M parameters), "
                  f"D ch {cfg['d_ch']} ({cfg['d_parameters'] / 1e6:.2f} M), {cfg['loss']} loss, Adam lr {cfg['lr']} "
                  f"betas ({cfg['beta1']}, {cfg['beta2']}); repeats {r['repeats']}, warm-up {r['warmup']}",
                  f"   iteration = 1 D update + 1 G update (n_dis = 1 here; the {model} preset trains with "
                  f"n_dis = {cfg['preset_n_dis']})"]
        if "check" in r:
            lines += format_check(r["check"])
        elif "compare_skipped" in r:
            lines.append(f"   torch comparison skipped: {r['compare_skipped']}")
        lines += format_phases(r)
        if "breakdown" in r:
            lines += format_breakdown(r)
        if "launches" in r:
            lines += format_launches(r)
        lines += format_memory(r)
    if len(results) > 1 and all("ratios" in r for r in results.values()):
        lines += ["", "npsn / torch, iteration medians: " + ", ".join(
            f"{key} {r['ratios']['iteration']:.2f}" for key, r in results.items())]
    return "\n".join(lines)
