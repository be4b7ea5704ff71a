package pgtest

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestFindBinDir(t *testing.T) {
	t.Setenv("PATH", "") // only the directories given below count
	root := t.TempDir()
	mkBin := func(dir string) string {
		t.Helper()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"initdb", "pg_ctl"} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	lib := filepath.Join(root, "lib")
	mkBin(filepath.Join(lib, "9.6", "bin"))
	v15 := mkBin(filepath.Join(lib, "15", "bin"))
	mkBin(filepath.Join(lib, "13", "bin"))
	if err := os.MkdirAll(filepath.Join(lib, "16", "bin"), 0o755); err != nil { // no binaries
		t.Fatal(err)
	}
	custom := mkBin(filepath.Join(root, "custom"))

	tests := []struct {
		name    string
		pgbin   string
		libRoot string
		want    string
		wantErr error
	}{
		{"PGBIN wins", custom, lib, custom, nil},
		{"newest version with binaries", "", lib, v15, nil},
		{"PGBIN without binaries falls back", filepath.Join(root, "empty"), lib, v15, nil},
		{"nothing found", "", filepath.Join(root, "none"), "", ErrNoPostgres},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := findBinDir(tt.pgbin, tt.libRoot)
			if !errors.Is(err, tt.wantErr) || got != tt.want {
				t.Fatalf("findBinDir(%q, %q) = %q, %v; want %q, %v", tt.pgbin, tt.libRoot, got, err, tt.want, tt.wantErr)
			}
		})
	}
}
