"""Report half of bench/cpu_per_gb: reads its runs ("direct|fallacy GBIT/S BUSY FALLACY_CPUS" per
line) and the CPU count; prints the table and the CPUs 0.9 of direct would need."""
import sys


def main(path, cpus):
    rows = [line.split() for line in open(path)]

    def of(name):
        return [(float(g), float(b), float(f)) for n, g, b, f in rows if n == name]

    direct, through = of("direct"), of("fallacy")
    print("| | Gbit/s | machine busy | fallacy's CPUs |\n|---|---|---|---|")
    for name, runs in (("direct", direct), ("through fallacy", through)):
        gbps = ", ".join(f"{g:.1f}" for g, _, _ in runs)
        busy = f"{min(b for _, b, _ in runs):.0%}-{max(b for _, b, _ in runs):.0%}"
        own = "—" if name == "direct" else f"{min(x for *_, x in runs):.2f}-{max(x for *_, x in runs):.2f}"
        print(f"| {name} | {gbps} | {busy} | {own} |")
    # CPU seconds per GB: the ends' from the fastest direct run, fallacy's the median of its runs
    g, busy, _ = max(direct)
    ends = busy * cpus / (g / 8)
    per_gb = sorted(x / (gg / 8) for gg, _, x in through)
    own = per_gb[len(per_gb) // 2]
    need = (ends + own) * 0.9 * g / 8
    print(f"\nthe two iperf3 ends: {ends:.2f} s of CPU per GB (fastest direct run, {g:.1f} Gbit/s, "
          f"machine {busy:.0%} busy)")
    print(f"fallacy: {own:.2f} s of CPU per GB (median of its runs)")
    print(f"0.9 of {g:.1f} Gbit/s at {ends:.2f} + {own:.2f} s per GB needs {need:.2f} CPUs: "
          f"{need / cpus:.0%} of this machine's {cpus}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
