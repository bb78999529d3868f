/*
 * failwrite.so: an LD_PRELOAD shim for tests/storage_faults.rs, standing in for a disk that
 * fails writes for a while. While the file named by FAILWRITE_CONTROL exists, write, pwrite,
 * pwrite64, writev, fsync and fdatasync on files under the folder FAILWRITE_DIR fail with EIO.
 * Everything else (reads, other files, the log on stderr) is untouched.
 *
 *   gcc -shared -fPIC -O2 -o failwrite.so failwrite.c -ldl
 *   LD_PRELOAD=./failwrite.so FAILWRITE_DIR=/state FAILWRITE_CONTROL=/tmp/fail pbxguard serve
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static char dir[PATH_MAX];
static char control[PATH_MAX];

__attribute__((constructor)) static void setup(void) {
    const char *d = getenv("FAILWRITE_DIR");
    const char *c = getenv("FAILWRITE_CONTROL");
    if (d && c && strlen(d) < sizeof dir && strlen(c) < sizeof control) {
        strcpy(dir, d);
        strcpy(control, c);
    }
}

/* Whether a write to `fd` must fail now. */
static int failing(int fd) {
    if (!dir[0] || access(control, F_OK) != 0) {
        return 0;
    }
    char link[64];
    char path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) {
        return 0;
    }
    path[n] = '\0';
    size_t len = strlen(dir);
    return strncmp(path, dir, len) == 0 && (path[len] == '/' || path[len] == '\0');
}

#define REAL(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

ssize_t write(int fd, const void *buf, size_t count) {
    if (failing(fd)) {
        errno = EIO;
        return -1;
    }
    return REAL(write)(fd, buf, count);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    if (failing(fd)) {
        errno = EIO;
        return -1;
    }
    return REAL(pwrite)(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset) {
    if (failing(fd)) {
        errno = EIO;
        return -1;
    }
    return REAL(pwrite64)(fd, buf, count, offset);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    if (failing(fd)) {
        errno = EIO;
        return -1;
    }
    return REAL(writev)(fd, iov, iovcnt);
}

int fsync(int fd) {
    if (failing(fd)) {
        errno = EIO;
        return -1;
    }
    return REAL(fsync)(fd);
}

int fdatasync(int fd) {
    if (failing(fd)) {
        errno = EIO;
        return -1;
    }
    return REAL(fdatasync)(fd);
}
