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
	"math/big"
	"net"
	"os"
	"path/filepath"
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
