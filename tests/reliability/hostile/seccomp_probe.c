/* The system-call probe of tests/reliability/hostile/seccomp.rs, built
 * static by the test and run as root inside a tenant and on the host.
 * Each argument names one call, made by number (no libc wrapper that could
 * fall back or hide the errno) in a child process of its own, so that one
 * call's namespaces or keys never change the next; one line per call:
 * "NAME ok" or "NAME errno N". */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/io_uring.h>
#include <linux/keyctl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* A fork through the raw call: the child exits at once. */
static long fork_with(long ret) {
    if (ret == 0)
        _exit(0);
    if (ret > 0)
        waitpid((pid_t)ret, NULL, 0);
    return ret < 0 ? -1 : 0;
}

static long call(const char *name) {
    if (!strcmp(name, "io_uring_setup")) {
        struct io_uring_params p;
        memset(&p, 0, sizeof p);
        long fd = syscall(__NR_io_uring_setup, 4, &p);
        if (fd >= 0)
            close((int)fd);
        return fd < 0 ? -1 : 0;
    }
    if (!strcmp(name, "keyctl"))
        return syscall(__NR_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_PROCESS_KEYRING, 1) < 0 ? -1 : 0;
    if (!strcmp(name, "add_key"))
        return syscall(__NR_add_key, "user", "sotolito-probe", "x", 1, KEY_SPEC_PROCESS_KEYRING) < 0 ? -1 : 0;
    if (!strcmp(name, "request_key")) {
        /* Finds the key add_key puts in this process's own keyring (gone
         * when the probe exits). */
        syscall(__NR_add_key, "user", "sotolito-probe", "x", 1, KEY_SPEC_PROCESS_KEYRING);
        return syscall(__NR_request_key, "user", "sotolito-probe", NULL, 0) < 0 ? -1 : 0;
    }
    if (!strcmp(name, "unshare_user"))
        return syscall(__NR_unshare, CLONE_NEWUSER) < 0 ? -1 : 0;
    if (!strcmp(name, "unshare_net"))
        return syscall(__NR_unshare, CLONE_NEWNET) < 0 ? -1 : 0;
    if (!strcmp(name, "clone"))
        return fork_with(syscall(__NR_clone, SIGCHLD, 0, 0, 0, 0));
    if (!strcmp(name, "clone_newuser"))
        return fork_with(syscall(__NR_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0));
    if (!strcmp(name, "clone3")) {
        struct clone_args a;
        memset(&a, 0, sizeof a);
        a.exit_signal = SIGCHLD;
        return fork_with(syscall(__NR_clone3, &a, sizeof a));
    }
    fprintf(stderr, "probe: unknown call %s\n", name);
    _exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0) {
            perror("probe: fork");
            return 2;
        }
        if (pid == 0) {
            errno = 0;
            if (call(argv[i]) == 0)
                printf("%s ok\n", argv[i]);
            else
                printf("%s errno %d\n", argv[i], errno);
            fflush(stdout);
            _exit(0);
        }
        int status;
        if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "probe: %s: the child did not exit cleanly\n", argv[i]);
            return 2;
        }
    }
    return 0;
}
