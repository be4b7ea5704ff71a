package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmoat/pgmoat/bench"
)

const (
	dbName = "bench"
	// tenant is the tenant every benchmark client works as; the others only
	// hold rows that RLS must hide.
	tenant = "t1"
)

// Tenant styles: how a target's client puts the tenant into a transaction,
// which selects its pgbench script (scripts/<workload>_<style>.sql, with
// "inline" becoming a_simple or a_pipeline by protocol).
const (
	stylePlain  = "plain"  // the client sends only its own statements
	styleInline = "inline" // in the same round trip as its first statement
	styleBPrime = "bprime" // BEGIN; SET LOCAL; ... one statement per round trip
)

// target is one way of reaching PostgreSQL.
type target struct {
	name, desc     string
	port           int
	user, password string
	style          string
	prepared       bool        // supports -M prepared
	proc           *exec.Cmd   // the middle layer's process; nil for direct
	middle         *managedCmd // the same, for stopping
}

// pid is the middle layer's process id, 0 for a direct target.
func (t *target) pid() int {
	if t.proc == nil || t.proc.Process == nil {
		return 0
	}
	return t.proc.Process.Pid
}

// libpqEnv is the environment that points pgbench (libpq) at t.
func (t *target) libpqEnv() []string {
	return []string{"PGHOST=127.0.0.1", "PGPORT=" + strconv.Itoa(t.port), "PGUSER=" + t.user,
		"PGPASSWORD=" + t.password, "PGDATABASE=" + dbName, "PGSSLMODE=disable", "PGAPPNAME=pgbench"}
}

// connString is t as a pgconn connection string.
func (t *target) connString() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=disable",
		t.port, t.user, t.password, dbName)
}

// script is the pgbench script t runs for workload in protocol mode.
func (t *target) script(workload, mode string) string {
	style := t.style
	if style == styleInline {
		style = "a_pipeline"
		if mode == "simple" {
			style = "a_simple"
		}
	}
	if workload == "select1" {
		return "select1.sql"
	}
	return workload + "_" + style + ".sql"
}

// managedCmd is a long-running process the runner started and stops.
type managedCmd struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when the process has exited
}

// env is the throwaway world of one benchmark: a PostgreSQL cluster, the
// bare relay, PgBouncer and pgmoat, all on loopback, files in dir.
type env struct {
	opts   *options
	dir    string
	pgdir  string
	pgPort int
	asPG   *syscall.Credential // run servers as the postgres OS user (nil unless root)
	procs  []*managedCmd
	pgUp   bool

	direct, relay, bouncer, bouncerP, pgmoat *target
}

// freePort returns a loopback TCP port nothing listens on now.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// setupEnv builds the relay and pgmoat, starts PostgreSQL with the schema,
// then the relay, PgBouncer and pgmoat, and checks that each target reaches
// tenant t1's rows and only those. On error it has already cleaned up.
func setupEnv(ctx context.Context, o *options) (_ *env, err error) {
	e := &env{opts: o}
	e.dir, err = os.MkdirTemp("", "pgmoat-bench.")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if err := os.Chmod(e.dir, 0o755); err != nil {
		return nil, err
	}
	if os.Getuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root needs the postgres OS user (useradd --system --no-create-home postgres): %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		e.asPG = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	if err := e.writeFiles(); err != nil {
		return nil, err
	}

	logf("building the bare relay and (unless -pgmoat) bin/pgmoat ...")
	pgmoatBin, err := filepath.Abs(o.pgmoatBin)
	if err != nil {
		return nil, err
	}
	if o.pgmoatBin == "" {
		pgmoatBin, _ = filepath.Abs(filepath.Join("bin", "pgmoat"))
		if err := runCmd(ctx, exec.CommandContext(ctx, o.goBin, "build", "-o", pgmoatBin, "./cmd/pgmoat")); err != nil {
			return nil, err
		}
	}
	relayBin := filepath.Join(e.dir, "relay")
	if err := runCmd(ctx, exec.CommandContext(ctx, o.goBin, "build", "-o", relayBin, "./bench/relay")); err != nil {
		return nil, err
	}

	if err := e.startPostgres(ctx); err != nil {
		return nil, err
	}

	relayPort, err := freePort()
	if err != nil {
		return nil, err
	}
	relay, err := e.start("relay", relayBin, nil, "-listen", fmt.Sprintf("127.0.0.1:%d", relayPort),
		"-upstream", fmt.Sprintf("127.0.0.1:%d", e.pgPort))
	if err != nil {
		return nil, err
	}
	bouncer, bouncerPort, err := e.startPgBouncer()
	if err != nil {
		return nil, err
	}
	pgmoat, pgmoatPort, err := e.startPgmoat(pgmoatBin)
	if err != nil {
		return nil, err
	}

	e.direct = &target{name: "A", desc: "PostgreSQL directly, tenant set in the same round trip", port: e.pgPort,
		user: "bench_app", password: "bench_app_secret", style: styleInline, prepared: true}
	e.relay = &target{name: "R", desc: "bare relay (bench/relay), tenant from the role's default setting", port: relayPort,
		user: "bench_app_t1", password: "bench_app_t1_secret", style: stylePlain, prepared: true, proc: relay.cmd, middle: relay}
	e.bouncer = &target{name: "B", desc: "PgBouncer (transaction mode), A's scripts", port: bouncerPort,
		user: "bench_app", password: "bench_app_secret", style: styleInline, proc: bouncer.cmd, middle: bouncer}
	e.bouncerP = &target{name: "B'", desc: "PgBouncer, BEGIN; SET LOCAL; ...; one statement per round trip", port: bouncerPort,
		user: "bench_app", password: "bench_app_secret", style: styleBPrime, proc: bouncer.cmd, middle: bouncer}
	e.pgmoat = &target{name: "C", desc: "pgmoat, the client sending only its own statements", port: pgmoatPort,
		user: "bench_t1", password: "bench_t1_secret", style: stylePlain, prepared: true, proc: pgmoat.cmd, middle: pgmoat}

	for _, t := range e.targets() {
		if err := e.check(ctx, t); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// targets lists every target in the order of the tables.
func (e *env) targets() []*target {
	return []*target{e.direct, e.relay, e.bouncer, e.bouncerP, e.pgmoat}
}

// writeFiles copies the embedded schema and scripts into dir/files, which
// every user can read.
func (e *env) writeFiles() error {
	return fs.WalkDir(bench.Files, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		dst := filepath.Join(e.dir, "files", path)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		b, err := bench.Files.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o644)
	})
}

func (e *env) scriptDir() string { return filepath.Join(e.dir, "files", "scripts") }

// serverCmd makes a command that runs as the postgres OS user when the
// runner is root (PostgreSQL and PgBouncer refuse to run as root).
func (e *env) serverCmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if ctx == nil {
		cmd = exec.Command(name, args...)
	} else {
		cmd = exec.CommandContext(ctx, name, args...)
	}
	cmd.Dir = e.dir
	if e.asPG != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: e.asPG}
	}
	return cmd
}

// mkdirPG makes a directory owned by the user the servers run as.
func (e *env) mkdirPG(dir string, perm os.FileMode) error {
	if err := os.Mkdir(dir, perm); err != nil {
		return err
	}
	if e.asPG != nil {
		return os.Chown(dir, int(e.asPG.Uid), int(e.asPG.Gid))
	}
	return nil
}

func (e *env) startPostgres(ctx context.Context) error {
	var err error
	if e.pgPort, err = freePort(); err != nil {
		return err
	}
	e.pgdir = filepath.Join(e.dir, "pg")
	if err := e.mkdirPG(e.pgdir, 0o700); err != nil {
		return err
	}
	data := filepath.Join(e.pgdir, "data")
	logf("starting PostgreSQL on 127.0.0.1:%d in %s ...", e.pgPort, e.dir)
	// Unix-socket connections are trusted (the schema loads as the
	// superuser); TCP needs a SCRAM password, as in production.
	initdb := e.serverCmd(ctx, filepath.Join(e.opts.pgBin, "initdb"), "-D", data, "-U", "postgres",
		"--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
	if err := runCmd(ctx, initdb); err != nil {
		return err
	}
	// max_connections leaves room for the idle-connection test through the
	// one-to-one targets (one backend per client) and 64 pgbench clients.
	opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -c port=%d -c unix_socket_directories=%s -c fsync=off "+
		"-c max_connections=%d", e.pgPort, e.pgdir, e.opts.idleConns+200)
	start := e.serverCmd(ctx, filepath.Join(e.opts.pgBin, "pg_ctl"), "-D", data, "-l", filepath.Join(e.pgdir, "server.log"),
		"-w", "-t", "60", "-o", opts, "start")
	if err := runCmd(ctx, start); err != nil {
		if b, rerr := os.ReadFile(filepath.Join(e.pgdir, "server.log")); rerr == nil {
			err = fmt.Errorf("%w\n%s", err, tail(string(b), 2000))
		}
		return err
	}
	e.pgUp = true

	psql := func(args ...string) *exec.Cmd {
		a := append([]string{"-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", e.pgdir, "-p", strconv.Itoa(e.pgPort), "-U", "postgres"}, args...)
		return exec.CommandContext(ctx, filepath.Join(e.opts.pgBin, "psql"), a...)
	}
	if err := runCmd(ctx, psql("-d", "postgres", "-c", "CREATE DATABASE "+dbName)); err != nil {
		return err
	}
	logf("loading the multi-tenant pgbench schema (%d tenants, scale %d each) ...", e.opts.tenants, e.opts.scale)
	return runCmd(ctx, psql("-d", dbName, "-v", "tenants="+strconv.Itoa(e.opts.tenants),
		"-v", "scale="+strconv.Itoa(e.opts.scale), "-f", filepath.Join(e.dir, "files", "schema.sql")))
}

// start runs a long-lived process with its output in dir/<name>.log.
func (e *env) start(name, bin string, cred *syscall.Credential, args ...string) (*managedCmd, error) {
	logPath := filepath.Join(e.dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(bin, args...)
	cmd.Dir = e.dir
	cmd.Stdout, cmd.Stderr = f, f
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	m := &managedCmd{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { cmd.Wait(); close(m.done) }()
	e.procs = append(e.procs, m)
	return m, nil
}

func (e *env) startPgBouncer() (*managedCmd, int, error) {
	port, err := freePort()
	if err != nil {
		return nil, 0, err
	}
	dir := filepath.Join(e.dir, "pgbouncer")
	if err := e.mkdirPG(dir, 0o700); err != nil {
		return nil, 0, err
	}
	// PgBouncer's defaults except what the benchmark needs: transaction
	// pooling, SCRAM for clients and towards PostgreSQL, room for the
	// idle-connection test, no unix socket.
	ini := fmt.Sprintf(`[databases]
%s = host=127.0.0.1 port=%d dbname=%s user=bench_app password=bench_app_secret

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = scram-sha-256
auth_file = %s
pool_mode = transaction
default_pool_size = 20
max_client_conn = %d
logfile = %s
`, dbName, e.pgPort, dbName, port, filepath.Join(dir, "userlist.txt"), e.opts.idleConns+200, filepath.Join(dir, "pgbouncer.log"))
	files := map[string]string{
		"pgbouncer.ini": ini,
		"userlist.txt":  `"bench_app" "bench_app_secret"` + "\n",
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			return nil, 0, err
		}
		if e.asPG != nil {
			if err := os.Chown(p, int(e.asPG.Uid), int(e.asPG.Gid)); err != nil {
				return nil, 0, err
			}
		}
	}
	m, err := e.start("pgbouncer", e.opts.pgbouncerBin, e.asPG, filepath.Join(dir, "pgbouncer.ini"))
	return m, port, err
}

func (e *env) startPgmoat(bin string) (*managedCmd, int, error) {
	port, err := freePort()
	if err != nil {
		return nil, 0, err
	}
	metricsPort, err := freePort()
	if err != nil {
		return nil, 0, err
	}
	var users strings.Builder
	for i := 1; i <= e.opts.tenants; i++ {
		fmt.Fprintf(&users, "  - {name: bench_t%d, password: bench_t%d_secret, tenant: t%d}\n", i, i, i)
	}
	// pgmoat's defaults except the addresses, the users and a client limit
	// above the idle-connection test's.
	cfg := fmt.Sprintf(`listen: 127.0.0.1:%d
metrics_listen: 127.0.0.1:%d
upstream:
  dsn: "host=127.0.0.1 port=%d user=bench_pgmoat dbname=%s sslmode=disable"
  password: bench_pgmoat_secret
users:
%slimits:
  max_client_connections: %d
`, port, metricsPort, e.pgPort, dbName, users.String(), e.opts.idleConns+200)
	path := filepath.Join(e.dir, "pgmoat.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return nil, 0, err
	}
	m, err := e.start("pgmoat", bin, nil, "run", "--config", path)
	return m, port, err
}

// check waits until t accepts a login, then checks that RLS applies through
// it: as tenant t1 it sees exactly t1's accounts. Direct without a tenant
// it must see none.
func (e *env) check(ctx context.Context, t *target) error {
	deadline := time.Now().Add(30 * time.Second)
	var conn *pgconn.PgConn
	for {
		var err error
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err = pgconn.Connect(cctx, t.connString())
		cancel()
		if err == nil {
			break
		}
		if t.middle != nil {
			select {
			case <-t.middle.done:
				return fmt.Errorf("%s (%s) exited:\n%s", t.name, t.middle.name, tail(readFile(t.middle.log), 2000))
			default:
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("target %s on port %d: %w", t.name, t.port, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	defer conn.Close(context.Background())

	want := strconv.Itoa(100000 * e.opts.scale)
	count := "SELECT count(*) FROM pgbench_accounts"
	if t.style != stylePlain {
		if got, err := queryOne(ctx, conn, count); err != nil || got != "0" {
			return fmt.Errorf("target %s without a tenant: %s rows, %v; want 0 rows (is RLS forced?)", t.name, got, err)
		}
		count = "BEGIN; SET LOCAL app.current_tenant_id = '" + tenant + "'; " + count + "; COMMIT"
	}
	if got, err := queryOne(ctx, conn, count); err != nil || got != want {
		return fmt.Errorf("target %s as tenant %s: %s rows, %v; want %s", t.name, tenant, got, err, want)
	}
	return nil
}

// clientBackends counts PostgreSQL's client backends other than its own,
// through the superuser's Unix socket.
func (e *env) clientBackends(ctx context.Context) (int, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(cctx, fmt.Sprintf("host=%s port=%d user=postgres dbname=%s", e.pgdir, e.pgPort, dbName))
	if err != nil {
		return 0, fmt.Errorf("count backends: %w", err)
	}
	defer conn.Close(context.Background())
	n, err := queryOne(cctx, conn, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
	if err != nil {
		return 0, fmt.Errorf("count backends: %w", err)
	}
	return strconv.Atoi(n)
}

// awaitClientBackends waits, a minute at most, until no more than n client
// backends are left.
func (e *env) awaitClientBackends(ctx context.Context, n int) error {
	deadline := time.Now().Add(time.Minute)
	for {
		got, err := e.clientBackends(ctx)
		if err != nil {
			return err
		}
		if got <= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d client backends still open a minute after the idle connections closed, want %d", got, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// queryOne runs sql (possibly several statements) in one simple Query and
// returns the first column of the first row of its results.
func queryOne(ctx context.Context, conn *pgconn.PgConn, sql string) (string, error) {
	results, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return "", err
	}
	for _, r := range results {
		if len(r.Rows) > 0 && len(r.Rows[0]) > 0 {
			return string(r.Rows[0][0]), nil
		}
	}
	return "", errors.New("no rows")
}

// close stops everything setupEnv started and removes dir unless -keep.
func (e *env) close() {
	for i := len(e.procs) - 1; i >= 0; i-- {
		m := e.procs[i]
		m.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-m.done:
		case <-time.After(5 * time.Second):
			m.cmd.Process.Kill()
			<-m.done
		}
	}
	if e.pgUp {
		stop := e.serverCmd(nil, filepath.Join(e.opts.pgBin, "pg_ctl"), "-D", filepath.Join(e.pgdir, "data"), "-m", "fast", "-w", "stop")
		if out, err := stop.CombinedOutput(); err != nil {
			logf("pg_ctl stop: %v\n%s", err, out)
		}
	}
	if e.opts.keep {
		logf("kept %s", e.dir)
		return
	}
	os.RemoveAll(e.dir)
}

// runCmd runs a short command and returns its output with any error.
func runCmd(ctx context.Context, cmd *exec.Cmd) error {
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%s: %w\n%s", strings.Join(cmd.Args, " "), err, tail(string(out), 2000))
	}
	return nil
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// tail returns at most the last n bytes of s.
func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
