"""The client side of a server: closed and open loop, the capacity search, metrics scrapes, reports and plots,
soak and fault runs, the Locust file. Talks to a server over HTTP; nothing here runs inside one."""
