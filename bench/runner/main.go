// Command runner is `make bench`: it starts a throwaway PostgreSQL with a
// multi-tenant pgbench schema (bench/schema.sql), the bare relay
// (bench/relay), PgBouncer in transaction mode and pgmoat, runs pgbench
// against each of them side by side, interleaved in rounds with the order of
// the targets rotated each round, and prints a Markdown report: throughput
// medians with their spread, mean latency, the middle layer's CPU time per
// transaction (from /proc), single-client latency percentiles, a connection
// storm, the memory of idle client connections, the ratios of pgmoat to the
// others, and which of issue 8's targets were met.
//
// Run it from the repository root (it builds ./cmd/pgmoat and ./bench/relay):
//
//	go run ./bench/runner            # the full comparison, under 10 minutes on 2 cores
//	go run ./bench/runner -quick     # a smoke test of every target and mode, about a minute
//	go run ./bench/runner -serve     # start everything and wait, to run pgbench or pprof by hand
//
// As root, PostgreSQL and PgBouncer run as the postgres OS user. It exits
// non-zero if anything fails to start or any pgbench run reports an error;
// a missed performance target is reported, not an error.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// options are the runner's flags.
type options struct {
	quick        bool
	rounds       int
	seconds      int // per throughput and storm run
	latSeconds   int // per single-client latency run
	clients      []int
	modes        []string
	idleConns    int
	tenants      int
	scale        int
	only         string // comma-separated target names to run, default all
	pgBin        string
	pgbouncerBin string
	pgmoatBin    string
	goBin        string
	out          string
	keep         bool
	serve        bool
}

func parseFlags() (*options, error) {
	o := &options{}
	var clients, modes string
	flag.BoolVar(&o.quick, "quick", false, "smoke test: 1 round of 2 s runs (1 s for latency), 8 clients, fewer workloads, 100 idle connections")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds (each runs every target once per workload, in rotated order)")
	flag.IntVar(&o.seconds, "seconds", 2, "duration of each throughput and storm run in seconds (≥ 2 measures CPU after the connection phase)")
	flag.IntVar(&o.latSeconds, "lat-seconds", 1, "duration of each single-client latency run in seconds")
	flag.StringVar(&clients, "clients", "8,64", "client counts for the throughput runs")
	flag.StringVar(&modes, "modes", "simple,extended,prepared", "pgbench query modes (-M)")
	flag.IntVar(&o.idleConns, "idle", 1000, "idle client connections for the memory test")
	flag.IntVar(&o.tenants, "tenants", 4, "tenants in the schema (the benchmark runs as t1)")
	flag.IntVar(&o.scale, "scale", 1, "pgbench scale factor per tenant")
	flag.StringVar(&o.only, "only", "", "run only these targets, comma-separated (A,R,B,B',C); default all")
	flag.StringVar(&o.pgBin, "pgbin", os.Getenv("PGBIN"), "PostgreSQL binaries (default $PGBIN, else the newest /usr/lib/postgresql/*/bin)")
	flag.StringVar(&o.pgmoatBin, "pgmoat", "", "pgmoat binary to measure (default: build bin/pgmoat)")
	flag.StringVar(&o.goBin, "go", "go", "go command")
	flag.StringVar(&o.out, "o", "", "also write the report to this file")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (logs, configuration)")
	flag.BoolVar(&o.serve, "serve", false, "start everything, print how to reach each target, and wait for Ctrl-C (for profiling by hand)")
	flag.Parse()
	if flag.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	if o.quick {
		// 2 s, not 1: pgbench's -T includes connecting, and on a busy
		// machine 8 SCRAM logins through a hop can take a second.
		o.rounds, o.seconds, o.latSeconds, o.idleConns = 1, 2, 1, 100
		clients = "8"
	}
	for _, s := range strings.Split(clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-clients: bad count %q", s)
		}
		o.clients = append(o.clients, n)
	}
	for _, m := range strings.Split(modes, ",") {
		m = strings.TrimSpace(m)
		if m != "simple" && m != "extended" && m != "prepared" {
			return nil, fmt.Errorf("-modes: unknown mode %q", m)
		}
		o.modes = append(o.modes, m)
	}
	if o.rounds < 1 || o.seconds < 1 || o.latSeconds < 1 || o.idleConns < 1 || o.tenants < 1 || o.scale < 1 {
		return nil, fmt.Errorf("-rounds, -seconds, -lat-seconds, -idle, -tenants and -scale must be positive")
	}
	if _, err := os.Stat("go.mod"); err != nil {
		return nil, fmt.Errorf("run from the repository root (no go.mod here)")
	}
	return o, findBinaries(o)
}

// findBinaries locates PostgreSQL's binaries and PgBouncer, installing
// Debian's pgbouncer package if it is missing and we are root.
func findBinaries(o *options) error {
	if o.pgBin == "" {
		dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
		slices.SortFunc(dirs, func(a, b string) int { return versionOf(b) - versionOf(a) })
		for _, d := range dirs {
			if _, err := os.Stat(filepath.Join(d, "pgbench")); err == nil {
				o.pgBin = d
				break
			}
		}
	}
	if o.pgBin == "" {
		if p, err := exec.LookPath("initdb"); err == nil {
			o.pgBin = filepath.Dir(p)
		}
	}
	for _, b := range []string{"initdb", "pg_ctl", "psql", "pgbench"} {
		if _, err := os.Stat(filepath.Join(o.pgBin, b)); err != nil {
			return fmt.Errorf("no %s in %q: set PGBIN or install postgresql-15 and postgresql-client-15", b, o.pgBin)
		}
	}
	find := func() string {
		if p, err := exec.LookPath("pgbouncer"); err == nil {
			return p
		}
		if _, err := os.Stat("/usr/sbin/pgbouncer"); err == nil {
			return "/usr/sbin/pgbouncer"
		}
		return ""
	}
	if o.pgbouncerBin = find(); o.pgbouncerBin == "" && os.Getuid() == 0 {
		logf("pgbouncer is missing: apt-get install -y pgbouncer ...")
		cmd := exec.Command("apt-get", "install", "-y", "pgbouncer")
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get install -y pgbouncer: %v\n%s", err, tail(string(out), 2000))
		}
		o.pgbouncerBin = find()
	}
	if o.pgbouncerBin == "" {
		return fmt.Errorf("pgbouncer not found: install it (Debian: apt-get install pgbouncer)")
	}
	return nil
}

// versionOf is the major version in /usr/lib/postgresql/<major>/bin.
func versionOf(dir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return n
}

var started = time.Now()

// logf reports progress on standard error, with the seconds since start.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench %4.0fs: "+format+"\n", append([]any{time.Since(started).Seconds()}, args...)...)
}

func main() {
	o, err := parseFlags()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runAll(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		stop()
		os.Exit(1)
	}
}

// bencher runs pgbench against the environment and collects results.
type bencher struct {
	*env
	pgbenchBin string
	scriptDir  string
	threads    int // pgbench -j for multi-client runs
	scale      int
}

func runAll(ctx context.Context, o *options) error {
	began := time.Now()
	e, err := setupEnv(ctx, o)
	if err != nil {
		return err
	}
	defer e.close()
	b := &bencher{env: e, pgbenchBin: filepath.Join(o.pgBin, "pgbench"), scriptDir: e.scriptDir(), threads: 2, scale: o.scale}
	if o.serve {
		fmt.Printf("scripts: %s (pgbench -n -D scale=%d -f <script> %s)\n", b.scriptDir, o.scale, dbName)
		for _, t := range e.targets() {
			fmt.Printf("%-2s pid %-7d %s\n   %s\n", t.name, t.pid(), t.desc, strings.Join(t.libpqEnv(), " "))
		}
		fmt.Printf("logs and configuration in %s; Ctrl-C stops everything\n", e.dir)
		<-ctx.Done()
		return nil
	}

	rep := &report{opts: o, began: began, env: e, loadBefore: loadAverage()}
	rep.facts = machineFacts(o)

	// Memory first, while every middle layer is freshly started.
	for _, t := range []*target{e.relay, e.bouncer, e.pgmoat} {
		if !o.selected(t) {
			continue
		}
		before, err := e.clientBackends(ctx)
		if err != nil {
			return err
		}
		logf("opening %d idle connections through %s ...", o.idleConns, t.name)
		r, err := idleMemory(ctx, t, o.idleConns)
		if err != nil {
			return err
		}
		rep.idle = append(rep.idle, idleRow{target: t, res: r})
		// A thousand server backends exiting at once hold up the
		// machine for seconds (PostgreSQL's own exit work): measure
		// nothing until they are gone.
		if err := e.awaitClientBackends(ctx, before); err != nil {
			return err
		}
		time.Sleep(500 * time.Millisecond) // the last exits' own work
	}

	cells := planCells(o, e)
	if !o.quick {
		// Warm up every target (connections, caches, pgmoat's decision
		// cache) with a short run that is not recorded.
		for _, t := range e.targets() {
			if !o.selected(t) {
				continue
			}
			if _, err := b.pgbench(ctx, run{target: t, script: t.script("select", "simple"), mode: "simple", clients: 8, seconds: 1}); err != nil {
				return err
			}
		}
	}
	total := 0
	for _, c := range cells {
		total += len(c.targets) * o.rounds
	}
	logf("%d pgbench runs in %d rounds ...", total, o.rounds)
	done := 0
	for round := range o.rounds {
		for _, c := range cells {
			var line []string
			for _, t := range rotate(c.targets, round) {
				r := c.run(t)
				if c.latency {
					r.logTo = filepath.Join(e.dir, "lat")
				}
				res, err := b.pgbench(ctx, r)
				if err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					// Record the failure and go on: the rest of the
					// comparison is still worth having.
					logf("FAILED: %v", err)
					c.failures[t.name] = append(c.failures[t.name], firstLine(err.Error()))
					line = append(line, t.name+" FAILED")
					done++
					continue
				}
				if c.latency {
					res.p50, res.p99 = percentile(res.latencies, 50), percentile(res.latencies, 99)
					res.latencies = nil
				}
				c.results[t.name] = append(c.results[t.name], res)
				line = append(line, fmt.Sprintf("%s %.0f", t.name, res.tps))
				done++
			}
			logf("[%d/%d, round %d] %s: %s tps", done, total, round+1, c.title(), strings.Join(line, ", "))
		}
	}
	rep.cells = cells
	rep.elapsed = time.Since(began)
	rep.loadAfter = loadAverage()

	text := rep.markdown()
	fmt.Print(text)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(text), 0o644); err != nil {
			return err
		}
	}
	if n := rep.failureCount(); n > 0 {
		return fmt.Errorf("%d pgbench run(s) failed (see the report)", n)
	}
	return nil
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// selected says whether t is to be measured (-only).
func (o *options) selected(t *target) bool {
	if o.only == "" {
		return true
	}
	return slices.Contains(strings.Split(o.only, ","), t.name)
}

// cell is one workload configuration, measured on several targets.
type cell struct {
	kind     string // "throughput", "storm" or "latency"
	workload string // script prefix: select, tpcb, select1, txn
	mode     string
	clients  int
	seconds  int
	latency  bool // single client, percentiles from pgbench's transaction log
	targets  []*target
	results  map[string][]result // by target name, one per successful round
	failures map[string][]string // by target name, the error of each failed round
}

func (c *cell) run(t *target) run {
	seconds := c.seconds
	if c.clients > 8 {
		// pgbench's -T includes connecting the clients, which for 64
		// clients (a backend each, two SCRAM logins each through pgmoat)
		// is a large part of a 2 s run; the reported tps excludes it.
		seconds++
	}
	return run{target: t, script: t.script(c.workload, c.mode), mode: c.mode, clients: c.clients,
		seconds: seconds, connect: c.kind == "storm"}
}

func (c *cell) title() string {
	return fmt.Sprintf("%s %s -M %s, %d clients", c.kind, c.workload, c.mode, c.clients)
}

// planCells lists what is measured: throughput for each workload, mode and
// client count on every target that supports the mode (PgBouncer 1.18 in
// transaction mode cannot run -M prepared; B' runs at 8 clients only, to
// keep the run under 10 minutes); a connection storm; and single-client
// latency of SELECT 1 (A, R, B, C) and of the tenant transaction (A, R, B',
// C). The quick mode keeps one cell of each kind that exercises every
// target and protocol path: all modes of the select workload, the
// read-write transaction with -M extended, SELECT 1 with -M simple and the
// tenant transaction with -M extended.
func planCells(o *options, e *env) []*cell {
	var cells []*cell
	add := func(c *cell, ts ...*target) {
		for _, t := range ts {
			if o.selected(t) && (c.mode != "prepared" || t.prepared) {
				c.targets = append(c.targets, t)
			}
		}
		if len(c.targets) > 0 {
			c.results = make(map[string][]result)
			c.failures = make(map[string][]string)
			cells = append(cells, c)
		}
	}
	wanted := func(workload, mode string) bool {
		if !slices.Contains(o.modes, mode) {
			return false
		}
		if !o.quick {
			return true
		}
		switch workload {
		case "tpcb", "txn":
			return mode == "extended"
		case "select1":
			return mode == "simple"
		}
		return true
	}
	for _, n := range o.clients {
		ts := e.targets()
		if n > 8 {
			ts = slices.DeleteFunc(ts, func(t *target) bool { return t == e.bouncerP })
		}
		for _, w := range []string{"select", "tpcb"} {
			for _, m := range o.modes {
				if wanted(w, m) {
					add(&cell{kind: "throughput", workload: w, mode: m, clients: n, seconds: o.seconds}, ts...)
				}
			}
		}
	}
	add(&cell{kind: "storm", workload: "select", mode: "simple", clients: 8, seconds: o.seconds},
		e.direct, e.relay, e.bouncer, e.pgmoat)
	for _, m := range []string{"simple", "extended"} {
		if wanted("select1", m) {
			add(&cell{kind: "latency", workload: "select1", mode: m, clients: 1, seconds: o.latSeconds, latency: true},
				e.direct, e.relay, e.bouncer, e.pgmoat)
		}
		if wanted("txn", m) {
			add(&cell{kind: "latency", workload: "txn", mode: m, clients: 1, seconds: o.latSeconds, latency: true},
				e.direct, e.relay, e.bouncerP, e.pgmoat)
		}
	}
	return cells
}
