/*
 * LD_PRELOAD shim for Kamailio 5.6 with OpenSSL 3 (Debian 12), used by benches/sip_load.rs.
 *
 * Kamailio initialises OpenSSL in its main process (rank 0) and then forks its workers, with
 * OpenSSL's allocator redirected to Kamailio's shared memory. OpenSSL 3 keeps per-thread state
 * (the error queue ERR_STATE, the per-thread DRBGs, ...) behind pthread keys; after fork()
 * every worker's main thread still points at the *same* shared-memory objects that rank 0
 * created, and workers corrupt each other under load ("qm_free(): BUG: freeing already freed
 * pointer ... called from tls: tls_init.c: ser_free"; #3791 reports workers aborting). See Kamailio
 * issues #3635, #3695 and #3791 (the last one is exactly 5.6.3 on Debian 12).
 *
 * Kamailio 5.7.x/5.8 fix this with `tls_threads_mode` (1: initialise libssl in a run-once
 * thread; 2: also clean thread-locals after fork). 5.6.3 has no such parameter, so this shim
 * does the equivalent from outside: it records every pthread key created in the process
 * (OpenSSL's CRYPTO_THREAD_init_local is a pthread_key_create) and, in each forked child,
 * sets them all to NULL, so that each worker lazily builds its own per-thread OpenSSL state.
 * Objects rank 0 had made are leaked once per worker (a few kB of shm); nothing else changes.
 *
 * Build: cc -shared -fPIC -O2 -o ossl3_fork_fix.so ossl3_fork_fix.c -ldl
 * Use:   LD_PRELOAD=/path/ossl3_fork_fix.so kamailio ...
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>

#define MAX_KEYS 256

static pthread_key_t keys[MAX_KEYS];
static volatile int nkeys;

int pthread_key_create(pthread_key_t *key, void (*destructor)(void *))
{
	static int (*real)(pthread_key_t *, void (*)(void *));
	int r;

	if(!real)
		real = (int (*)(pthread_key_t *, void (*)(void *)))dlsym(
				RTLD_NEXT, "pthread_key_create");
	r = real(key, destructor);
	if(r == 0) {
		int i = __atomic_fetch_add(&nkeys, 1, __ATOMIC_SEQ_CST);
		if(i < MAX_KEYS)
			keys[i] = *key;
	}
	return r;
}

static void in_child(void)
{
	int i, n = nkeys < MAX_KEYS ? nkeys : MAX_KEYS;

	for(i = 0; i < n; i++)
		pthread_setspecific(keys[i], NULL);
}

__attribute__((constructor)) static void ossl3_fork_fix_init(void)
{
	pthread_atfork(NULL, NULL, in_child);
}
