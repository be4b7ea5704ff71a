package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgmoat/pgmoat/config"
)

// writeTestCert writes a self-signed certificate for 127.0.0.1 and its key
// into dir and returns their paths.
func writeTestCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "pgmoat test"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func TestTLS(t *testing.T) {
	certFile, keyFile := writeTestCert(t, t.TempDir())
	for _, require := range []bool{false, true} {
		p := startProxy(t, func(c *config.Config) {
			c.TLS = config.TLS{CertFile: certFile, KeyFile: keyFile, Require: require}
		})
		for _, sslmode := range []string{"require", "verify-full", "disable"} {
			dsn := p.dsn("acme_app", "acme_secret")
			dsn = dsn[:len(dsn)-len("sslmode=disable")] + "sslmode=" + sslmode + " sslrootcert=" + certFile
			conn, err := pgx.Connect(context.Background(), dsn)
			if sslmode == "disable" && require {
				if sqlstate(err) != "28000" {
					t.Errorf("require, plaintext client: %v, want 28000", err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("require=%v sslmode=%s: %v", require, sslmode, err)
			}
			_, encrypted := conn.PgConn().Conn().(*tls.Conn)
			if encrypted != (sslmode != "disable") {
				t.Errorf("require=%v sslmode=%s: encrypted = %v", require, sslmode, encrypted)
			}
			wantOnly(t, tenantsOf(t, conn, "select tenant_id from orders"), "acme")
			conn.Close(context.Background())
		}
	}
}

func TestNoTLSConfigured(t *testing.T) {
	p := startProxy(t, nil)
	dsn := p.dsn("acme_app", "acme_secret")
	_, err := pgx.Connect(context.Background(), dsn[:len(dsn)-len("disable")]+"require")
	if err == nil {
		t.Fatal("sslmode=require succeeded against a proxy without TLS")
	}
	// sslmode=prefer falls back to plaintext after the 'N'.
	conn, err := pgx.Connect(context.Background(), dsn[:len(dsn)-len("disable")]+"prefer")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	wantOnly(t, tenantsOf(t, conn, "select tenant_id from orders"), "acme")
}

// TestUpstreamTLS: pgmoat connects upstream over TLS as the DSN's sslmode
// says, verifying the server's certificate with verify-full; a server whose
// certificate does not verify is refused (the client gets 08006).
func TestUpstreamTLS(t *testing.T) {
	c := privateCluster(t)
	// The server reads its key as the OS user it runs as, and wants it
	// private to that user.
	dir := filepath.Join(c.Dir, "pg")
	certFile, keyFile := writeTestCert(t, dir)
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatal(err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		for _, f := range []string{certFile, keyFile} {
			if err := os.Chown(f, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
	}
	ctx := context.Background()
	for _, sql := range []string{
		fmt.Sprintf("ALTER SYSTEM SET ssl_cert_file = '%s'", certFile),
		fmt.Sprintf("ALTER SYSTEM SET ssl_key_file = '%s'", keyFile),
		"ALTER SYSTEM SET ssl = on",
		"SELECT pg_reload_conf()",
	} {
		if err := c.Exec(ctx, "postgres", sql); err != nil {
			t.Fatal(err)
		}
	}
	otherCA, _ := writeTestCert(t, t.TempDir()) // a certificate that did not sign the server's
	dsn := func(rootCert string) string {
		return strings.Replace(c.DSN("pgmoat", "pgmoat_secret", "app"), "sslmode=disable", "sslmode=verify-full sslrootcert="+rootCert, 1)
	}
	// The reload is asynchronous: wait until the server speaks TLS.
	bound := time.Now().Add(30 * time.Second)
	for {
		conn, err := pgx.Connect(ctx, dsn(certFile))
		if err == nil {
			conn.Close(ctx)
			break
		}
		if time.Now().After(bound) {
			t.Fatalf("server never accepted TLS: %v\n%s", err, c.LogTail())
		}
		time.Sleep(50 * time.Millisecond)
	}

	p := startProxy(t, func(cfg *config.Config) { cfg.Upstream.DSN = dsn(certFile) })
	conn := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeCacheStatement)
	wantOnly(t, tenantsOf(t, conn, "select tenant_id from orders"), "acme")
	su, err := pgx.Connect(ctx, c.DSN("postgres", "", "app"))
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close(ctx)
	var all, plain int
	if err := su.QueryRow(ctx, "select count(*), count(*) filter (where not s.ssl) from pg_stat_activity a join pg_stat_ssl s using (pid) where a.usename = 'pgmoat'").Scan(&all, &plain); err != nil {
		t.Fatal(err)
	}
	if all == 0 || plain != 0 {
		t.Errorf("%d of pgmoat's %d server connections are not encrypted", plain, all)
	}

	// With a root certificate that did not sign the server's, the
	// connector refuses the server.
	untrusted, err := NewPgConnector(dsn(otherCA), "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := untrusted.Connect(ctx, nil); err == nil {
		t.Error("connected to a server whose certificate does not verify")
	}
}
