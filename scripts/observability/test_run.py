"""run and drain: what the run reads off processes and logs."""
import os
import subprocess
import unittest

from . import drain, run


class Exposition(unittest.TestCase):
    def test_names_and_values(self):
        self.assertEqual(run.sample_name("# TYPE x gauge"), "")
        self.assertEqual(run.sample_name('x{a="b c"} 3'), "x")
        self.assertEqual(run.sample_value('x{a="b c",d="}"} 3 1700000000000'), 3.0)
        self.assertEqual(run.sample_value("x 2.5"), 2.5)


class Processes(unittest.TestCase):
    def test_alive_until_reaped_and_not_as_a_zombie(self):
        self.assertTrue(run.alive(os.getpid()))
        child = subprocess.Popen(["true"])
        pid = child.pid
        child.wait()
        self.assertFalse(run.alive(pid))
        zombie = subprocess.Popen(["true"])
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
        self.assertFalse(run.alive(zombie.pid))
        zombie.wait()


class GatewayLog(unittest.TestCase):
    def test_closes_after_a_time_with_their_codes(self):
        lines = [
            "2026-12-05T10:00:00.000000Z  INFO socket closed user=a code=1000 reason=\"reconnect\"",
            "2026-12-05T10:00:02.500000Z  INFO socket closed user=b code=1012",
            "2026-12-05T10:00:03.000000Z  INFO login user=c",
        ]
        start = drain.closes_logged(lines[:1], 0)[0][0]
        self.assertEqual([code for _, code in drain.closes_logged(lines, 0)], ["1000", "1012"])
        self.assertEqual(drain.closes_logged(lines, start + 1), [(start + 2.5, "1012")])


if __name__ == "__main__":
    unittest.main()
