// Command relay is the bare relay of `make bench` (target R): the thinnest
// TCP relay, the floor of what any hop between a client and PostgreSQL
// costs. Per client connection it dials the upstream and runs two goroutines,
// one per direction, each copying through its own user-space buffer. It does
// not parse the protocol, authenticate, pool or log.
//
//	relay -listen 127.0.0.1:6433 -upstream 127.0.0.1:5432
//
// The copy loop is written out rather than io.Copy: io.Copy between two
// *net.TCPConn would use splice(2) and move the bytes inside the kernel,
// which no proxy that looks at messages can do, so it would not be a fair
// floor for one.
package main

import (
	"flag"
	"log"
	"net"
)

// bufSize is io.Copy's default buffer size.
const bufSize = 32 << 10

func main() {
	listen := flag.String("listen", "127.0.0.1:6433", "address to accept clients on")
	upstream := flag.String("upstream", "127.0.0.1:5432", "address of the PostgreSQL server")
	flag.Parse()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	for {
		client, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go relay(client, *upstream)
	}
}

// relay connects client to a new upstream connection and copies both ways
// until either side closes. It owns client.
func relay(client net.Conn, upstream string) {
	server, err := net.Dial("tcp", upstream)
	if err != nil {
		log.Print(err)
		client.Close()
		return
	}
	go pipe(server, client)
	pipe(client, server)
}

// pipe copies src to dst until a read or write fails, then closes both
// connections, which also ends the goroutine copying the other way.
func pipe(dst, src net.Conn) {
	buf := make([]byte, bufSize)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
}
