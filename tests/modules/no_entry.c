/* A shared object that is no poolsrv module (no poolsrv_module symbol). */
__attribute__((visibility("default"))) int not_a_poolsrv_module(void);

int not_a_poolsrv_module(void)
{
    return 42;
}
