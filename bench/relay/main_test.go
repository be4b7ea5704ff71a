package main

import (
	"bytes"
	"io"
	"net"
	"testing"
)

// The relay carries bytes both ways and closing the client closes the
// upstream connection.
func TestRelay(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	upstreamDone := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			upstreamDone <- err
			return
		}
		defer c.Close()
		_, err = io.Copy(c, c) // echo until the relay closes the connection
		upstreamDone <- err
	}()

	client, relayEnd := net.Pipe()
	go relay(relayEnd, ln.Addr().String())

	msg := bytes.Repeat([]byte("Q"), 3*bufSize+7) // more than one buffer
	go client.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(client, got); err != nil {
		t.Fatalf("read the echo: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("the echo differs from what was sent")
	}
	client.Close()
	if err := <-upstreamDone; err != nil {
		t.Fatalf("upstream: %v", err)
	}
}
