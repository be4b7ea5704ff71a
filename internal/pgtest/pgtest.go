// Package pgtest starts throwaway PostgreSQL clusters for tests: initdb in a
// temporary directory, a free port on 127.0.0.1, fsync off, trust
// authentication, and removal of everything on Stop.
//
// PostgreSQL refuses to run as root, so when the test runs as root every
// server binary runs as the "postgres" OS user through runuser, and the
// directories are created so that user can reach them (DESIGN.md section 10).
//
// Typical use, one cluster per test binary:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
//	func TestX(t *testing.T) {
//		c := pgtest.Shared(t) // demo schema loaded in database "app"
//		conn, err := pgx.Connect(ctx, c.DSN("pgmoat", "pgmoat_secret", "app"))
//		...
//	}
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmoat/pgmoat/deploy/demo"
)

// ErrNoPostgres is returned by Start when no PostgreSQL server binaries
// (initdb and pg_ctl) can be found. Tests skip on it; .ci/run installs them.
var ErrNoPostgres = errors.New("pgtest: no PostgreSQL binaries found (set PGBIN or install postgresql-15)")

// osUser is the OS user that runs the server when the caller is root.
const osUser = "postgres"

// startTimeout bounds how long pg_ctl waits for the server to accept
// connections.
const startTimeout = 30 * time.Second

// Cluster is a running throwaway PostgreSQL cluster. Its superuser is
// "postgres"; every role and database trusts connections from 127.0.0.1, so
// passwords are accepted but not checked. Methods are safe to call from
// concurrent tests, except Stop.
type Cluster struct {
	Host string // always 127.0.0.1
	Port int
	Dir  string // temporary directory holding everything; removed by Stop

	binDir   string    // directory of initdb, pg_ctl
	dataDir  string    // Dir/pg/data
	logFile  string    // Dir/pg/server.log
	asOSUser bool      // run binaries through runuser -u postgres
	watchdog *exec.Cmd // stops the server if the test process dies first
	stopped  bool
	down     bool // StopServer stopped the server; StartServer clears it
}

// Start initdb's a new cluster in a temporary directory and starts it on a
// free port of 127.0.0.1. It returns ErrNoPostgres when no PostgreSQL
// binaries exist; other errors include the server log's tail. The caller
// must Stop the cluster. Should the test process die without calling Stop
// (a test timeout panics without running deferred calls), a watchdog process
// stops the server and removes Dir.
func Start() (*Cluster, error) {
	binDir, err := findBinDir(os.Getenv("PGBIN"), "/usr/lib/postgresql")
	if err != nil {
		return nil, err
	}
	c := &Cluster{Host: "127.0.0.1", binDir: binDir, asOSUser: os.Geteuid() == 0}
	if err := c.makeDirs(); err != nil {
		return nil, err
	}
	if err := c.initdb(); err != nil {
		os.RemoveAll(c.Dir)
		return nil, err
	}
	// The free port is only free when we look; another process may take it
	// before the server binds. Try a second port once.
	for attempt := 1; ; attempt++ {
		if c.Port, err = freePort(); err != nil {
			os.RemoveAll(c.Dir)
			return nil, err
		}
		err = c.start()
		if err == nil {
			break
		}
		if attempt == 2 || !strings.Contains(c.LogTail(), "already in use") {
			os.RemoveAll(c.Dir)
			return nil, err
		}
	}
	if err := c.startWatchdog(); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// makeDirs creates Dir (0755, so the postgres OS user can traverse it) and
// Dir/pg (0700, owned by the user that runs the server) for the data
// directory, the log and the unix socket.
func (c *Cluster) makeDirs() error {
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	c.Dir = dir
	pgDir := filepath.Join(dir, "pg")
	c.dataDir = filepath.Join(pgDir, "data")
	c.logFile = filepath.Join(pgDir, "server.log")
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return fmt.Errorf("pgtest: %w", err)
	}
	if err := os.Mkdir(pgDir, 0o700); err != nil {
		os.RemoveAll(dir)
		return fmt.Errorf("pgtest: %w", err)
	}
	if !c.asOSUser {
		return nil
	}
	u, err := user.Lookup(osUser)
	if err != nil {
		os.RemoveAll(dir)
		return fmt.Errorf("pgtest: running as root needs the %q OS user (useradd --system %s): %w", osUser, osUser, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(pgDir, uid, gid); err != nil {
		os.RemoveAll(dir)
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

func (c *Cluster) initdb() error {
	out, err := c.command("initdb", "-D", c.dataDir, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pgtest: initdb: %w\n%s", err, out)
	}
	return nil
}

func (c *Cluster) start() error {
	opts := fmt.Sprintf("-c listen_addresses=127.0.0.1 -c port=%d -c unix_socket_directories=%s -c fsync=off",
		c.Port, filepath.Dir(c.dataDir))
	out, err := c.command("pg_ctl", "-D", c.dataDir, "-l", c.logFile, "-w",
		"-t", strconv.Itoa(int(startTimeout.Seconds())), "-o", opts, "start").CombinedOutput()
	if err != nil {
		// A server that missed the deadline may still come up: stop it so
		// that it does not outlive the failure.
		c.command("pg_ctl", "-D", c.dataDir, "-m", "immediate", "stop").Run()
		return fmt.Errorf("pgtest: pg_ctl start on port %d: %w\n%s\nserver log:\n%s", c.Port, err, out, c.LogTail())
	}
	return nil
}

// startWatchdog starts a shell that polls this process and, once it is
// gone, stops the server and removes Dir. Its output goes to /dev/null so
// that `go test` does not wait for it.
func (c *Cluster) startWatchdog() error {
	stop := c.command("pg_ctl", "-D", c.dataDir, "-m", "immediate", "stop").Args
	script := `while kill -0 "$1" 2>/dev/null; do sleep 1; done; shift 2; "$@" >/dev/null 2>&1; rm -rf "$dir"`
	args := append([]string{"-c", "dir=$2; " + script, "pgtest-watchdog", strconv.Itoa(os.Getpid()), c.Dir}, stop...)
	c.watchdog = exec.Command("/bin/sh", args...)
	c.watchdog.Dir = "/"
	if err := c.watchdog.Start(); err != nil {
		return fmt.Errorf("pgtest: start watchdog: %w", err)
	}
	return nil
}

// Stop stops the server (pg_ctl stop -m immediate) and removes Dir. Calling
// it again does nothing.
func (c *Cluster) Stop() error {
	if c.stopped {
		return nil
	}
	c.stopped = true
	if c.watchdog != nil {
		c.watchdog.Process.Kill()
		c.watchdog.Wait()
	}
	var errs []error
	if !c.down {
		if out, err := c.command("pg_ctl", "-D", c.dataDir, "-m", "immediate", "-w", "stop").CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("pgtest: pg_ctl stop: %w\n%s", err, out))
		}
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		errs = append(errs, fmt.Errorf("pgtest: %w", err))
	}
	return errors.Join(errs...)
}

// StopServer stops the server but keeps the cluster, its data and its port,
// so that StartServer can bring it back: a database restart or outage as
// clients see it. mode is pg_ctl's shutdown mode: "fast" (sessions are
// terminated with FATAL 57P01), "immediate" (the server quits without a
// clean shutdown, as in a crash; the next start recovers) or "smart" (waits
// for every session to end). It returns once the server is down. Neither
// StopServer nor StartServer may run concurrently with another method that
// changes the server's state (StartServer, StopServer, Stop).
func (c *Cluster) StopServer(mode string) error {
	switch mode {
	case "smart", "fast", "immediate":
	default:
		return fmt.Errorf("pgtest: unknown shutdown mode %q", mode)
	}
	if c.down || c.stopped {
		return errors.New("pgtest: server is not running")
	}
	if out, err := c.command("pg_ctl", "-D", c.dataDir, "-m", mode, "-w",
		"-t", strconv.Itoa(int(startTimeout.Seconds())), "stop").CombinedOutput(); err != nil {
		return fmt.Errorf("pgtest: pg_ctl stop -m %s: %w\n%s", mode, err, out)
	}
	c.down = true
	return nil
}

// StartServer starts a server stopped by StopServer again, on the same port
// and data directory. It returns once the server accepts connections. If
// another process took the port meanwhile, it fails (the log says so).
func (c *Cluster) StartServer() error {
	if !c.down || c.stopped {
		return errors.New("pgtest: server is not stopped")
	}
	if err := c.start(); err != nil {
		return err
	}
	c.down = false
	return nil
}

// DSN returns a key=value connection string for user on the cluster's TCP
// port, with sslmode=disable.
func (c *Cluster) DSN(user, password, database string) string {
	return fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=%s sslmode=disable",
		c.Host, c.Port, quote(user), quote(password), quote(database))
}

// quote quotes a conninfo value when it needs it (empty, spaces, quotes).
func quote(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n\r\\'") {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// Exec runs sql, which may hold several statements, in database as the
// superuser postgres using the simple query protocol. It returns the first
// error, which is a *pgconn.PgError for server errors.
func (c *Cluster) Exec(ctx context.Context, database, sql string) error {
	conn, err := pgconn.Connect(ctx, c.DSN("postgres", "", database))
	if err != nil {
		return fmt.Errorf("pgtest: connect to %s: %w", database, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
		return fmt.Errorf("pgtest: exec in %s: %w", database, err)
	}
	return nil
}

// CreateDemo creates the database "app" and loads demo.Schema into it. It can
// run once per cluster (the schema creates cluster-wide roles). Tests that
// change rows can copy it: CREATE DATABASE mine TEMPLATE app.
func (c *Cluster) CreateDemo(ctx context.Context) error {
	if err := c.Exec(ctx, "postgres", "CREATE DATABASE app"); err != nil {
		return err
	}
	if err := c.Exec(ctx, "app", demo.Schema); err != nil {
		return fmt.Errorf("pgtest: load demo schema: %w", err)
	}
	return nil
}

// LogTail returns the last 50 lines of the server log, for failure messages.
func (c *Cluster) LogTail() string {
	b, err := os.ReadFile(c.logFile)
	if err != nil {
		return fmt.Sprintf("(no server log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 50 {
		lines = lines[len(lines)-50:]
	}
	return strings.Join(lines, "\n")
}

// command returns a command running the PostgreSQL binary name, as the
// postgres OS user when we are root, from Dir (which that user can enter).
func (c *Cluster) command(name string, args ...string) *exec.Cmd {
	path := filepath.Join(c.binDir, name)
	var cmd *exec.Cmd
	if c.asOSUser {
		cmd = exec.Command(runuserPath(), append([]string{"-u", osUser, "--", path}, args...)...)
	} else {
		cmd = exec.Command(path, args...)
	}
	cmd.Dir = c.Dir
	return cmd
}

// runuserPath finds runuser, which lives in /usr/sbin: not on every root
// PATH (env -i, cron, some CI runners).
func runuserPath() string {
	if p, err := exec.LookPath("runuser"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/runuser", "/sbin/runuser"} {
		if isExecutable(p) {
			return p
		}
	}
	return "runuser" // fails with exec's "not found" error
}

// findBinDir returns the first directory holding both initdb and pg_ctl:
// pgbin if set, then libRoot/<version>/bin newest version first, then the
// directory of initdb found on PATH.
func findBinDir(pgbin, libRoot string) (string, error) {
	var candidates []string
	if pgbin != "" {
		candidates = append(candidates, pgbin)
	}
	versions, _ := filepath.Glob(filepath.Join(libRoot, "*", "bin"))
	sort.Slice(versions, func(i, j int) bool {
		return versionLess(filepath.Base(filepath.Dir(versions[j])), filepath.Base(filepath.Dir(versions[i])))
	})
	candidates = append(candidates, versions...)
	if p, err := exec.LookPath("initdb"); err == nil {
		candidates = append(candidates, filepath.Dir(p))
	}
	for _, dir := range candidates {
		if isExecutable(filepath.Join(dir, "initdb")) && isExecutable(filepath.Join(dir, "pg_ctl")) {
			return dir, nil
		}
	}
	return "", ErrNoPostgres
}

// versionLess orders version strings like "9.6" < "13" < "15" numerically.
func versionLess(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) && i < len(bs); i++ {
		x, _ := strconv.Atoi(as[i])
		y, _ := strconv.Atoi(bs[i])
		if x != y {
			return x < y
		}
	}
	return len(as) < len(bs)
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// freePort asks the kernel for a free TCP port on 127.0.0.1.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
