#!/usr/bin/env python3
"""Prints the first port from START up where COUNT consecutive ports are free on HOST (nothing can bind them):
the cluster scripts' daemons take them.

    scripts/free-port.py START [COUNT=1] [HOST=127.0.0.1]
"""
import socket
import sys

start = int(sys.argv[1])
count = int(sys.argv[2]) if len(sys.argv) > 2 else 1
host = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"


def free(port):
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


port = start
while not all(free(port + i) for i in range(count)):
    port += count
print(port)
