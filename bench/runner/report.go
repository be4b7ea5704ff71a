package main

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// report collects everything measured and renders it as Markdown.
type report struct {
	opts    *options
	env     *env
	began   time.Time
	elapsed time.Duration
	facts   [][2]string
	// loadBefore and loadAfter are /proc/loadavg's 1-minute averages: on a
	// shared machine they say how much else competed for the cores.
	loadBefore, loadAfter string
	cells                 []*cell
	idle                  []idleRow
}

type idleRow struct {
	target *target
	res    idleResult
}

// machineFacts describes the machine and the software measured.
func machineFacts(o *options) [][2]string {
	first := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).Output()
		if err != nil {
			return "unknown"
		}
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return line
	}
	cpu := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := "unknown"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 1 {
			var kb float64
			fmt.Sscan(f[1], &kb)
			mem = fmt.Sprintf("%.0f GiB", kb/(1<<20))
		}
	}
	commit := first("git", "rev-parse", "--short", "HEAD")
	if out, err := exec.Command("git", "status", "--porcelain").Output(); err == nil && len(out) > 0 {
		commit += " with uncommitted changes"
	}
	return [][2]string{
		{"date", time.Now().Format("2006-01-02 15:04 MST")},
		{"CPU", fmt.Sprintf("%s, %d cores visible", cpu, runtime.NumCPU())},
		{"memory", mem},
		{"kernel", first("uname", "-sr")},
		{"PostgreSQL", first(filepath.Join(o.pgBin, "postgres"), "--version") + " (fsync=off, otherwise defaults)"},
		{"PgBouncer", first(o.pgbouncerBin, "--version") + " (transaction mode, default_pool_size 20)"},
		{"pgbench", first(filepath.Join(o.pgBin, "pgbench"), "--version")},
		{"Go", runtime.Version()},
		{"pgmoat", "commit " + commit},
		{"settings", fmt.Sprintf("%d round(s), %d s per throughput/storm run, %d s per latency run, %d tenants × scale %d, pgbench -j %d, all on loopback",
			o.rounds, o.seconds, o.latSeconds, o.tenants, o.scale, 2)},
	}
}

func (r *report) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	mode := "full"
	if r.opts.quick {
		mode = "quick (smoke test: one short round, numbers are indicative only)"
	}
	p("## Run: %s\n\n", mode)
	p("| | |\n|---|---|\n")
	for _, f := range r.facts {
		p("| %s | %s |\n", f[0], f[1])
	}
	p("| wall time | %s |\n", r.elapsed.Round(time.Second))
	p("| load average (1 min) | %s at the start, %s at the end (anything above ~1 means other processes competed for the cores) |\n\n",
		r.loadBefore, r.loadAfter)

	p("Targets: ")
	for i, t := range r.env.targets() {
		if i > 0 {
			p("; ")
		}
		p("**%s** %s", t.name, t.desc)
	}
	p(".\n\n")

	r.throughput(&b)
	r.cpuAndLatency(&b)
	r.storm(&b)
	r.latency(&b)
	r.idleMemory(&b)
	r.targetsMet(&b)
	r.failed(&b)
	return b.String()
}

func (r *report) failureCount() int {
	n := 0
	for _, c := range r.cells {
		for _, f := range c.failures {
			n += len(f)
		}
	}
	return n
}

func (r *report) failed(b *strings.Builder) {
	if r.failureCount() == 0 {
		return
	}
	fmt.Fprintf(b, "### Failed runs (left out of the medians above)\n\n")
	for _, c := range r.cells {
		for _, t := range c.targets {
			for _, f := range c.failures[t.name] {
				fmt.Fprintf(b, "- %s on %s: %s\n", c.title(), t.name, strings.ReplaceAll(f, "|", "\\|"))
			}
		}
	}
	fmt.Fprintf(b, "\n")
}

func (r *report) cellsOf(kind string) []*cell {
	var cs []*cell
	for _, c := range r.cells {
		if c.kind == kind {
			cs = append(cs, c)
		}
	}
	return cs
}

// tps returns the median and spread of t's throughput in c.
func (c *cell) tps(name string) (float64, float64, bool) {
	rs := c.results[name]
	if len(rs) == 0 {
		return 0, 0, false
	}
	xs := make([]float64, len(rs))
	for i, x := range rs {
		xs[i] = x.tps
	}
	return median(xs), spread(xs), true
}

// med returns the median over rounds of f applied to t's results in c.
func (c *cell) med(name string, f func(result) float64) (float64, bool) {
	rs := c.results[name]
	if len(rs) == 0 {
		return 0, false
	}
	xs := make([]float64, len(rs))
	for i, x := range rs {
		xs[i] = f(x)
	}
	return median(xs), true
}

// steady says whether every CPU figure of t in c excludes the connection
// phase.
func (c *cell) steady(name string) bool {
	for _, x := range c.results[name] {
		if !x.steady {
			return false
		}
	}
	return true
}

// ratio returns c's median tps on target a over target b.
func (c *cell) ratio(a, b string) (float64, bool) {
	x, _, ok1 := c.tps(a)
	y, _, ok2 := c.tps(b)
	if !ok1 || !ok2 || y == 0 {
		return 0, false
	}
	return x / y, true
}

// missing renders a target without results in c: failed, or not run.
func (c *cell) missing(name string) string {
	if len(c.failures[name]) > 0 {
		return "failed"
	}
	return "–"
}

var throughputCols = []string{"A", "R", "B", "B'", "C"}

func (r *report) throughput(b *strings.Builder) {
	cs := r.cellsOf("throughput")
	if len(cs) == 0 {
		return
	}
	fmt.Fprintf(b, "### Throughput (tps, median of rounds ± half their range)\n\n")
	fmt.Fprintf(b, "| workload | -M | clients | A direct | R relay | B PgBouncer | B' PgBouncer, SET LOCAL | C pgmoat | C/R | C/B | C/B' | C/A |\n")
	fmt.Fprintf(b, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, c := range cs {
		fmt.Fprintf(b, "| %s | %s | %d |", c.workload, c.mode, c.clients)
		for _, n := range throughputCols {
			if m, s, ok := c.tps(n); ok {
				fmt.Fprintf(b, " %.0f%s |", m, spreadText(s, len(c.results[n])))
			} else {
				fmt.Fprintf(b, " %s |", c.missing(n))
			}
		}
		for _, n := range []string{"R", "B", "B'", "A"} {
			fmt.Fprintf(b, " %s |", ratioText(c.ratio("C", n)))
		}
		fmt.Fprintf(b, "\n")
	}
	fmt.Fprintf(b, "\n")
}

// spreadText renders a spread; a single round has none.
func spreadText(s float64, rounds int) string {
	if rounds < 2 {
		return ""
	}
	return fmt.Sprintf(" ±%.1f%%", 100*s)
}

// loadAverage returns the 1-minute load average from /proc/loadavg.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "unknown"
	}
	return f[0]
}

func ratioText(v float64, ok bool) string {
	if !ok {
		return "–"
	}
	return fmt.Sprintf("%.2f", v)
}

func (r *report) cpuAndLatency(b *strings.Builder) {
	cs := r.cellsOf("throughput")
	if len(cs) == 0 {
		return
	}
	fmt.Fprintf(b, "### Mean latency (ms) and the middle layer's CPU per transaction (µs, from /proc/<pid>/stat)\n\n")
	fmt.Fprintf(b, "CPU is measured between pgbench's first and last progress reports, after every client has connected; ")
	fmt.Fprintf(b, "a figure marked * covers the whole run, connection setup included (runs shorter than 2 s). ")
	fmt.Fprintf(b, "B and B' are the same PgBouncer process.\n\n")
	fmt.Fprintf(b, "| workload | -M | clients | lat A | lat R | lat B | lat B' | lat C | CPU R | CPU B | CPU B' | CPU C | CPU C/R |\n")
	fmt.Fprintf(b, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, c := range cs {
		fmt.Fprintf(b, "| %s | %s | %d |", c.workload, c.mode, c.clients)
		for _, n := range throughputCols {
			if v, ok := c.med(n, func(x result) float64 { return x.latencyMs }); ok {
				fmt.Fprintf(b, " %.3f |", v)
			} else {
				fmt.Fprintf(b, " – |")
			}
		}
		for _, n := range []string{"R", "B", "B'", "C"} {
			fmt.Fprintf(b, " %s |", cpuText(c, n))
		}
		fmt.Fprintf(b, " %s |\n", ratioText(cpuRatio(c, "C", "R")))
	}
	fmt.Fprintf(b, "\n")
}

func cpuUs(x result) float64 { return float64(x.cpuPerTx) / float64(time.Microsecond) }

func cpuText(c *cell, name string) string {
	v, ok := c.med(name, cpuUs)
	if !ok {
		return "–"
	}
	mark := ""
	if !c.steady(name) {
		mark = "*"
	}
	return fmt.Sprintf("%.0f%s", v, mark)
}

func cpuRatio(c *cell, a, b string) (float64, bool) {
	x, ok1 := c.med(a, cpuUs)
	y, ok2 := c.med(b, cpuUs)
	if !ok1 || !ok2 || y == 0 {
		return 0, false
	}
	return x / y, true
}

func (r *report) storm(b *strings.Builder) {
	for _, c := range r.cellsOf("storm") {
		fmt.Fprintf(b, "### Connection storm (pgbench -C: a new SCRAM login for every transaction, %s, -M %s, %d clients)\n\n", c.workload, c.mode, c.clients)
		fmt.Fprintf(b, "| target | tps incl. connecting | C/target | middle layer CPU per connection+transaction (µs) |\n|---|--:|--:|--:|\n")
		for _, t := range c.targets {
			m, s, ok := c.tps(t.name)
			if !ok {
				fmt.Fprintf(b, "| %s | %s | – | – |\n", t.name, c.missing(t.name))
				continue
			}
			cpu := "–"
			if t.pid() != 0 {
				v, _ := c.med(t.name, cpuUs)
				cpu = fmt.Sprintf("%.0f", v)
			}
			fmt.Fprintf(b, "| %s | %.0f%s | %s | %s |\n", t.name, m, spreadText(s, len(c.results[t.name])), ratioText(c.ratio("C", t.name)), cpu)
		}
		fmt.Fprintf(b, "\n")
	}
}

func (r *report) latency(b *strings.Builder) {
	cs := r.cellsOf("latency")
	if len(cs) == 0 {
		return
	}
	fmt.Fprintf(b, "### Single-client latency (µs, p50 / p99, median of rounds)\n\n")
	fmt.Fprintf(b, "`select1` is one `SELECT 1` round trip; `txn` is the tenant transaction (C and R: BEGIN, a point SELECT, COMMIT; ")
	fmt.Fprintf(b, "A: the same with the tenant set in BEGIN's round trip; B': BEGIN, SET LOCAL, SELECT, COMMIT through PgBouncer).\n\n")
	fmt.Fprintf(b, "| query | -M | A | R | B | B' | C | p50 C−R | p50 B'/C |\n|---|---|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, c := range cs {
		fmt.Fprintf(b, "| %s | %s |", c.workload, c.mode)
		for _, n := range throughputCols {
			p50, ok := c.med(n, func(x result) float64 { return x.p50 })
			p99, _ := c.med(n, func(x result) float64 { return x.p99 })
			if ok {
				fmt.Fprintf(b, " %.0f / %.0f |", p50, p99)
			} else {
				fmt.Fprintf(b, " – |")
			}
		}
		diff, speedup := "–", "–"
		p50 := func(n string) (float64, bool) { return c.med(n, func(x result) float64 { return x.p50 }) }
		if cv, ok := p50("C"); ok {
			if rv, ok := p50("R"); ok {
				diff = fmt.Sprintf("%+.0f", cv-rv)
			}
			if bv, ok := p50("B'"); ok && cv > 0 {
				speedup = fmt.Sprintf("%.2f", bv/cv)
			}
		}
		fmt.Fprintf(b, " %s | %s |\n", diff, speedup)
	}
	fmt.Fprintf(b, "\n")
}

func (r *report) idleMemory(b *strings.Builder) {
	if len(r.idle) == 0 {
		return
	}
	fmt.Fprintf(b, "### Resident memory of idle client connections (RSS from /proc, freshly started middle layers)\n\n")
	fmt.Fprintf(b, "| target | connections | RSS before | RSS with them open | per connection |\n|---|--:|--:|--:|--:|\n")
	for _, row := range r.idle {
		fmt.Fprintf(b, "| %s | %d | %.1f MiB | %.1f MiB | %.1f KiB |\n", row.target.name, row.res.n,
			float64(row.res.before)/(1<<20), float64(row.res.after)/(1<<20), row.res.perConn()/1024)
	}
	fmt.Fprintf(b, "\n")
}

// check is one of issue 8's targets, evaluated on this run.
type check struct {
	name, want, got string
	met             bool
}

func (r *report) targetsMet(b *strings.Builder) {
	var checks []check
	worst := func(name, want string, ok func(float64) bool, vals map[string]float64, higherBetter bool) {
		if len(vals) == 0 {
			return
		}
		var wk string
		wv := math.NaN()
		for k, v := range vals {
			if math.IsNaN(wv) || (higherBetter && v < wv) || (!higherBetter && v > wv) || (v == wv && k < wk) {
				wk, wv = k, v
			}
		}
		var failed []string
		for k, v := range vals {
			if !ok(v) {
				failed = append(failed, fmt.Sprintf("%s %.2f", k, v))
			}
		}
		slices.Sort(failed)
		got := fmt.Sprintf("worst %.2f (%s)", wv, wk)
		if len(failed) > 0 {
			got += fmt.Sprintf("; missed in %d of %d: %s", len(failed), len(vals), strings.Join(failed, ", "))
		}
		checks = append(checks, check{name: name, want: want, got: got, met: len(failed) == 0})
	}

	cr, cb, cpu := map[string]float64{}, map[string]float64{}, map[string]float64{}
	for _, c := range r.cellsOf("throughput") {
		if c.clients != 8 {
			continue
		}
		k := c.workload + " -M " + c.mode
		if v, ok := c.ratio("C", "R"); ok {
			cr[k] = v
		}
		if v, ok := c.ratio("C", "B"); ok {
			cb[k] = v
		}
		if v, ok := cpuRatio(c, "C", "R"); ok {
			cpu[k] = v
		}
	}
	worst("TPS C/R at 8 clients", "≥ 0.95", func(v float64) bool { return v >= 0.95 }, cr, true)
	worst("TPS C/B at 8 clients", "≥ 1.00", func(v float64) bool { return v >= 1.0 }, cb, true)
	worst("CPU per transaction C/R at 8 clients", "≤ 1.10", func(v float64) bool { return v <= 1.1 }, cpu, false)

	sel, txn := map[string]float64{}, map[string]float64{}
	for _, c := range r.cellsOf("latency") {
		cv, okC := c.med("C", func(x result) float64 { return x.p50 })
		switch c.workload {
		case "select1":
			if rv, ok := c.med("R", func(x result) float64 { return x.p50 }); ok && okC {
				sel["-M "+c.mode] = cv - rv
			}
		case "txn":
			if bv, ok := c.med("B'", func(x result) float64 { return x.p50 }); ok && okC && cv > 0 {
				txn["-M "+c.mode] = bv / cv
			}
		}
	}
	worst("SELECT 1 p50(C) − p50(R), µs", "≤ 5", func(v float64) bool { return v <= 5 }, sel, false)
	worst("tenant transaction p50(B') / p50(C)", "≥ 1.25", func(v float64) bool { return v >= 1.25 }, txn, true)

	mem := map[string]float64{}
	for _, row := range r.idle {
		if row.target.name == "C" {
			mem["C"] = row.res.perConn() / 1024
		}
	}
	worst("memory per idle client connection, KiB", "≤ 64", func(v float64) bool { return v <= 64 }, mem, false)

	if len(checks) == 0 {
		return
	}
	fmt.Fprintf(b, "### Issue 8's targets on this run\n\n| target | required | measured | met |\n|---|---|---|---|\n")
	for _, c := range checks {
		met := "yes"
		if !c.met {
			met = "**no**"
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s |\n", c.name, c.want, c.got, met)
	}
	fmt.Fprintf(b, "\n")
}
