#!/usr/bin/python3
"""python3-pyxs (Debian) against a xenstored socket: reads and writes,
transactions including a conflicting one (EAGAIN on commit), watches and
permissions. Usage: pyxs_compat.py SOCKET. Exits 0 and prints "pyxs: N checks
passed" when everything holds; raises otherwise."""
import errno
import signal
import sys
import threading

from pyxs import Client, PyXSError

SOCK = sys.argv[1]
checks = 0


def check(cond, what):
    global checks
    if not cond:
        raise AssertionError(what)
    checks += 1


def expect_error(code, fn, *args):
    try:
        fn(*args)
    except PyXSError as e:
        check(e.args[0] == code, "%s%r: errno %r, wanted %r" % (fn.__name__, args, e.args[0], code))
        return
    raise AssertionError("%s%r did not fail" % (fn.__name__, args))


def client():
    return Client(unix_socket_path=SOCK)


def main():
    # A hung daemon must fail the test, not hang it.
    signal.alarm(60)
    with client() as c:
        # Reads, writes, directories.
        c.write(b"/py/a", b"1")
        check(c.read(b"/py/a") == b"1", "read back")
        c.write(b"/py/bin", b"with space~")
        check(c.read(b"/py/bin") == b"with space~", "value with spaces")
        c.mkdir(b"/py/d")
        check(c.read(b"/py/d") == b"", "mkdir gives empty value")
        check(sorted(c.list(b"/py")) == [b"a", b"bin", b"d"], "list")
        check(c.exists(b"/py/a") and not c.exists(b"/py/zz"), "exists")
        expect_error(errno.ENOENT, c.read, b"/py/zz")
        c.delete(b"/py/bin")
        check(not c.exists(b"/py/bin"), "delete")
        check(c.get_domain_path(0) == b"/local/domain/0", "get_domain_path")
        walked = sorted(p for p, _, _ in c.walk(b"/py"))
        check(walked == [b"/py", b"/py/a", b"/py/d"], "walk %r" % walked)

        # Permissions.
        check(c.get_perms(b"/py/a") == [b"n0"], "default perms %r" % c.get_perms(b"/py/a"))
        c.set_perms(b"/py/a", [b"b0", b"r5", b"w7"])
        check(c.get_perms(b"/py/a") == [b"b0", b"r5", b"w7"], "set perms")
        expect_error(errno.ENOENT, c.set_perms, b"/py/none", [b"b0"])
        expect_error(errno.EINVAL, c.execute_command, 14, b"/py/a\x00", b"x9\x00")  # SET_PERMS, bad letter

        # A committed transaction.
        with client() as t:
            t.transaction()
            t.write(b"/py/tx/x", b"in-tx")
            check(not c.exists(b"/py/tx/x"), "uncommitted write invisible")
            check(t.read(b"/py/tx/x") == b"in-tx", "visible inside the transaction")
            check(t.commit(), "commit succeeds")
        check(c.read(b"/py/tx/x") == b"in-tx", "committed write visible")

        # An aborted transaction.
        with client() as t:
            t.transaction()
            t.write(b"/py/tx/y", b"gone")
            t.rollback()
        check(not c.exists(b"/py/tx/y"), "rolled back write discarded")

        # A conflicting transaction: commit fails with EAGAIN (pyxs: False).
        c.write(b"/py/conf", b"0")
        with client() as t:
            t.transaction()
            check(t.read(b"/py/conf") == b"0", "read in transaction")
            c.write(b"/py/conf", b"other")
            t.write(b"/py/conf", b"mine")
            check(t.commit() is False, "conflicting commit fails with EAGAIN")
        check(c.read(b"/py/conf") == b"other", "conflicting transaction had no effect")
        # The same transaction retried without interference commits.
        with client() as t:
            t.transaction()
            t.write(b"/py/conf", b"mine")
            check(t.commit(), "retry commits")
        check(c.read(b"/py/conf") == b"mine", "retried value")

        # Watches: the initial event, then one per change below the path.
        m = c.monitor()
        m.watch(b"/py/w", b"tok")
        events = m.wait()
        check(next(events) == (b"/py/w", b"tok"), "initial watch event")
        with client() as w:
            w.write(b"/py/w/k", b"v")
        check(next(events) == (b"/py/w/k", b"tok"), "event for a write below the watch")
        c.set_perms(b"/py/w/k", [b"b0"])
        check(next(events) == (b"/py/w/k", b"tok"), "event for a permission change")
        c.delete(b"/py/w")
        check(next(events) == (b"/py/w", b"tok"), "event for removal")
        m.unwatch(b"/py/w", b"tok")
        expect_error(errno.ENOENT, m.unwatch, b"/py/w", b"tok")

        # Special watch path.
        m.watch(b"@introduceDomain", b"intro")
        check(next(events) == (b"@introduceDomain", b"intro"), "special path initial event")
        m.unwatch(b"@introduceDomain", b"intro")

        # Concurrent clients on the same daemon.
        errors = []

        def worker(n):
            try:
                with client() as cc:
                    for i in range(50):
                        cc.write(b"/py/conc/%d" % n, b"%d" % i)
                        if cc.read(b"/py/conc/%d" % n) != b"%d" % i:
                            errors.append(n)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        check(not errors, "concurrent clients: %r" % errors)

        c.delete(b"/py")
        check(not c.exists(b"/py"), "cleanup")
    print("pyxs: %d checks passed" % checks)


if __name__ == "__main__":
    main()
