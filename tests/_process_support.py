"""Functions run by tests in worker processes (they must be importable by the child)."""

import os
import sys
import time


def square(x):
    return x * x


def getpid():
    return os.getpid()


def fail_deep():
    def innermost():
        raise ValueError("raised in the worker")

    innermost()


class Unpicklable(Exception):
    def __init__(self, a, b):  # pickling calls cls(*args) with one arg: unpicklable
        super().__init__(f"{a}/{b}")
        self.lock = __import__("threading").Lock()


def raise_unpicklable():
    raise Unpicklable(1, 2)


def return_unpicklable():
    return lambda: None


def kill_myself(sig=9):
    os.kill(os.getpid(), sig)
    time.sleep(10)


def exit_hard(code):
    os._exit(code)


def announce_and_sleep(path, seconds):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return "finished"


def print_pid_and_sleep(seconds):
    print(f"worker pid {os.getpid()}", flush=True)
    sys.stdout.flush()
    time.sleep(seconds)
    return "finished"


def is_prime(n):
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


class NeedsTwoArgs(Exception):
    def __init__(self, a, b):  # pickles fine, but unpickling calls cls("a b"): TypeError
        super().__init__(f"{a} {b}")


def raise_needs_two_args():
    raise NeedsTwoArgs("a", "b")
