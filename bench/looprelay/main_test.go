package main

import (
	"bytes"
	"io"
	"net"
	"strconv"
	"syscall"
	"testing"
)

// The loop carries bytes both ways, more than a buffer at a time, and
// closing the client closes the upstream connection.
func TestLoop(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
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
	up, err := sockaddr(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	lfd, err := listenFD("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(lfd)
	if err != nil {
		t.Fatal(err)
	}
	go loop(lfd, up)

	client, err := net.Dial("tcp4", "127.0.0.1:"+strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
	if err != nil {
		t.Fatal(err)
	}
	msg := bytes.Repeat([]byte("Q"), 3*bufSize+7)
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
